# fwcluster — build, test and benchmark entry points.
#   make test    install what the tests need (apt + .venv) and run the suite
#   make test-upgrade  the cross-version rolling upgrade and rollback in the VM lab
#   make soak    the protocol simulations with 200,000 seeds (make test runs 2,000)
#   make chaos   30 minutes of the chaos soak (make test runs 170 s of it)
#   make image   build the default appliance image (see image/image.mk)
#   make release the image and signed bundle of a tagged release (docs/upgrade.md)
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := build/stamps
export PYTHONDONTWRITEBYTECODE := 1
# Downloaded packages and the cached base roots of the image, shared by
# every clone on the machine (image/build.py cache_dir); override to move.
export FWCLUSTER_CACHE ?= /var/cache/fwcluster

# Debian packages the daemons, the lab and the side-by-side benchmarks need.
APT_PKGS := nftables python3-nftables conntrack conntrackd iproute2 ucarp \
	keepalived python3-venv iperf3 tcpdump ethtool procps kmod iputils-ping \
	python3-prometheus-client kea-dhcp4-server kea-dhcp6-server kea-ctrl-agent kea-common

.PHONY: all deps venv test test-upgrade test-unit test-lab demo chaos bench bench-failover \
	bench-sync bench-flood bench-idle bench-balance bench-report clean distclean

all: test

$(STAMPS):
	mkdir -p $@

# apt only when something is missing: a warm machine needs no network.
# The stamp depends on the Makefile so a new package in APT_PKGS is noticed.
$(STAMPS)/apt: Makefile | $(STAMPS)
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
		echo "== apt: installing $(APT_PKGS)"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -q --no-install-recommends $(APT_PKGS); \
	fi
	touch $@

# Debian's python3 (not whatever python3 is first on PATH) so that
# python3-nftables from apt is importable in the venv.
$(VENV)/.stamp: requirements.txt $(STAMPS)/apt
	test -x $(PY) || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	$(PY) -c "import nftables, pyroute2, jinja2, pytest"
	touch $@

deps venv: $(VENV)/.stamp

CHECK_CLEAN = @if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && [ -n "$$(git status --porcelain)" ]; then git status --porcelain; echo "error: the checkout is not clean after the tests (debris of a test, a build output missing from .gitignore, or uncommitted work)" >&2; exit 1; fi

# The VM upgrade tests (marker `upgrade`) boot a pair of their own and take
# ~25 min under TCG: they run in `make test-upgrade`, which CI runs after.
test: deps
	$(PY) -m pytest -q --durations=30 -m "not upgrade" tests
	$(CHECK_CLEAN)

# Both members boot this tree's build capped to the previous protocol
# versions (`make image PROTOCOLS=previous`) and are upgraded, one at a
# time under 200 sessions, to this tree's bundle; then one rolls back.
test-upgrade: deps
	$(PY) -m pytest -q -s --durations=10 -m upgrade tests/vm/test_vm_upgrade.py
	$(CHECK_CLEAN)

test-unit: deps
	$(PY) -m pytest -q tests/unit

test-lab: deps
	$(PY) -m pytest -q tests/lab

demo: deps
	$(PY) -m tests.labkit demo

# The chaos soak (docs/lab.md): random faults under live traffic for
# CHAOS_SECONDS (default 30 min); CHAOS_SEED=N replays a schedule,
# CHAOS_MEMBERS=2|3, CHAOS_KEEP_GOING=1 runs on past the first violation.
chaos: deps
	CHAOS_SECONDS=$${CHAOS_SECONDS:-1800} $(PY) -m pytest -q -s tests/lab/test_chaos.py -k short_run

bench: bench-failover bench-sync bench-flood bench-idle bench-balance
	$(MAKE) bench-report

bench-report: deps
	$(PY) -m bench.report

# Then the fastest settings of carpd and keepalived, both faults, while
# syncd carries 5k new entries/s, with a flap count (docs/perf/failover.md).
bench-failover: deps
	$(PY) -m bench.failover
	$(PY) -m bench.failover --only fastest,keepalived-fastest --fault both --sync-load 5000 --trials 8

bench-sync: deps
	$(PY) -m bench.sync

bench-flood: deps
	$(PY) -m bench.flood

bench-idle: deps
	$(PY) -m bench.idle

bench-balance: deps
	$(PY) -m bench.balance

# Nightly-style: the randomised protocol simulations with many more scenarios
# (SIM_SCENARIOS; make test runs the tests' default of 2,000, the same checks).
.PHONY: soak
soak: deps
	SIM_SCENARIOS=$${SIM_SCENARIOS:-200000} $(PY) -m pytest -q tests/unit/test_*_simulation.py

clean:
	rm -rf build/stamps .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) build

-include image/image.mk
