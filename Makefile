# The two commands of the README:  make lab  (the main job on the built-in lab)
#                                  make test (every gate: lint, unit tests, molecule in the lab)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

SCENARIOS ?= $(notdir $(patsubst %/molecule.yml,%,$(wildcard molecule/*/molecule.yml)))

.PHONY: setup lab lab-stop lab-status lint unit molecule test constraints

setup:
	@tools/setup.sh

## lab: build the image if needed, boot the two nodes, converge site.yml, leave them running
lab: setup
	lab/labctl.py up
	ansible-playbook -i inventories/lab playbooks/site.yml
	lab/labctl.py status

## lab-stop: stop the lab nodes; no QEMU process is left behind
lab-stop:
	lab/labctl.py down

lab-status:
	lab/labctl.py status

lint: setup
	yamllint --strict .
	ansible-lint
	ruff check .
	ruff format --check .
	tools/check-specs.py
	tools/check-plugins.sh
	@for inventory in inventories/*/; do \
	  ansible-inventory -i $$inventory --graph >/dev/null || exit 1; done

unit: setup
	pytest

molecule: setup
	@for s in $(SCENARIOS); do echo "== molecule test -s $$s"; molecule test -s $$s; done

test: lint unit molecule

## constraints: re-freeze the transitive pins after changing requirements.txt
constraints:
	rm -rf .cache/freeze && python3 -m venv .cache/freeze
	.cache/freeze/bin/pip install -q -r requirements.txt
	{ echo "# Full pip freeze of requirements.txt on Python 3.11 (regenerate: make constraints)."; \
	  .cache/freeze/bin/pip freeze | sort -f; } > constraints.txt
