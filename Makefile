# The two commands of the README:  make lab  (the main job on the built-in lab)
#                                  make test (every gate: lint, unit tests, the lab suite)
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg

# The lab and CI run Ansible with mitogen's strategy (README, "Faster runs with mitogen"): under
# TCG a no-op site.yml drops from about 900 s to under 100 s. Roles never depend on it; the suite
# runs every module of the project once without it. LAB_MITOGEN=0 turns it off.
LAB_MITOGEN ?= 1
ifeq ($(LAB_MITOGEN),1)
MITOGEN = ANSIBLE_STRATEGY=mitogen_linear \
  ANSIBLE_STRATEGY_PLUGINS=$(wildcard $(CURDIR)/.venv/lib/python3*/site-packages/ansible_mitogen/plugins/strategy)
endif

# Seconds per phase, one "seconds<TAB>phase" line each: make test times lint and unit, the suite's
# callback (molecule/default/plugins/callback) each of its phases; tools/time-table.sh prints them.
export LAB_PHASE_TIMES ?= $(CURDIR)/.cache/phase-times.tsv

.PHONY: setup lab lab-stop lab-status lint unit molecule test constraints bench-ipam

setup:
	@tools/setup.sh

## lab: build the image if needed, boot the two nodes, converge site.yml, leave them running
lab: setup
	lab/labctl.py up
	$(MITOGEN) ansible-playbook -i inventories/lab --vault-id lab@lab/vault-password lab/nas.yml playbooks/site.yml
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

# One worker per core (pytest-xdist): CI's two cores halve the unit phase. --dist loadfile: each
# test file runs on one worker, so what its tests share (a PostgreSQL server, a playbook run whose
# hosts are the cases of several tests) starts once, not on both workers as --dist load split them.
# The IPAM runs of the tests keep their ledger cache in the checkout, not in the user's ~/.cache.
unit: setup
	XDG_CACHE_HOME=$(CURDIR)/.cache/unit-xdg pytest -n auto --dist loadfile

## molecule: the lab suite, one boot (molecule/default/README.md)
molecule: setup
	$(MITOGEN) molecule test

## test: every gate, then the time table of this run (also when a gate failed)
test: setup
	@mkdir -p .cache $(dir $(LAB_PHASE_TIMES)) && : > $(LAB_PHASE_TIMES)
	@# The lab image (about two minutes where no cache holds it) builds while lint and unit run;
	@# the suite's create step waits for it on labctl's build lock and finds it cached.
	@lab/labctl.py image > .cache/lab-image.log 2>&1 & \
	  tools/timed.sh lint $(MAKE) --no-print-directory lint && \
	  tools/timed.sh unit $(MAKE) --no-print-directory unit && \
	  $(MITOGEN) molecule test; status=$$?; tools/time-table.sh; exit $$status

## bench-ipam: the IPAM play on 1,000, 5,000 and 10,000 generated hosts x 8 rails, first run and
## no-op, wall time and peak memory next to the bare filter (a benchmark: not part of make test)
bench-ipam: setup
	tools/bench_ipam.py

## constraints: re-freeze the transitive pins after changing requirements.txt or requirements-dev.txt
constraints:
	rm -rf .cache/freeze && python3 -m venv .cache/freeze
	.cache/freeze/bin/pip install -q -r requirements-dev.txt
	{ echo "# Full pip freeze of requirements-dev.txt on Python 3.11 (regenerate: make constraints)."; \
	  .cache/freeze/bin/pip freeze | sort -f; } > constraints.txt
