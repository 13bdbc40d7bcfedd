#!/usr/bin/env bash
# Every module, lookup and filter must load and be documented (an action plugin is documented by
# its module of the same name in library/): `ansible-doc` works for each, and no
# plugin file is skipped. Ansible only warns when it skips a filter file (a filter importing
# module_utils, say), and its filters then vanish: here that warning fails the build.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0

for module in library/*.py; do
  name=$(basename "$module" .py)
  if ! out=$(ansible-doc -t module "$name" 2>&1) || grep -q "WARNING" <<<"$out"; then
    echo "ansible-doc -t module $name failed:"; echo "$out" | head -20; fail=1
  fi
done

shopt -s nullglob
for lookup in lookup_plugins/*.py; do
  name=$(basename "$lookup" .py)
  if ! out=$(ansible-doc -t lookup "$name" 2>&1) || grep -q "WARNING" <<<"$out"; then
    echo "ansible-doc -t lookup $name failed:"; echo "$out" | head -20; fail=1
  fi
done

for doc in filter_plugins/*.yml filter_plugins/*.yaml; do
  name=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["DOCUMENTATION"]["name"])' "$doc")
  if ! out=$(ansible-doc -t filter "$name" 2>&1) || grep -q "WARNING" <<<"$out"; then
    echo "ansible-doc -t filter $name failed:"; echo "$out" | head -20; fail=1
  fi
done
if out=$(ansible-doc -t filter -l 2>&1) && grep -i "warning" <<<"$out" | grep -q "filter_plugins"; then
  echo "a filter plugin file was skipped:"; grep -i warning <<<"$out"; fail=1
fi
exit $fail
