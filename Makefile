# Two entry points for a fresh machine (see README):
#   make run    set up .venv and run the main job
#   make test   set up .venv with the built wheel and run the test suite
#
# Torch is installed first and explicitly, so that no model package drags in a multi-GB CUDA
# build on a CPU machine. Override for a GPU machine, e.g.:
#   make run TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= all
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: run test venv wheel clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

venv: $(PY)
	$(PIP) install --quiet $(TORCH_SPEC)

run: venv
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	$(VENV)/bin/mlipzoo models check --all
	$(VENV)/bin/mlipzoo run

# Tests run against the installed wheel, as users get it, not the source tree. Some drive Debian
# packages, installed when missing and we can (as root): chromium for the site test (no browser
# download), slurm-wlm and munge for a private single-node SLURM (tests/slurm_local.py).
# Each entry is package:command-it-provides.
TEST_DEBS ?= chromium:chromium slurm-wlm:slurmctld munge:munged
test: venv
	@missing=""; for pair in $(TEST_DEBS); do \
	  command -v $${pair#*:} >/dev/null 2>&1 || [ -x /usr/sbin/$${pair#*:} ] || missing="$$missing $${pair%%:*}"; \
	done; \
	[ -z "$$missing" ] || if [ "$$(id -u)" = 0 ] && apt-get update -qq; then \
	  for deb in $$missing; do DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$deb >/dev/null \
	    || echo "$$deb could not be installed: the tests that drive it will be skipped"; done; \
	else echo "not installed:$$missing (needs root and apt): the tests that drive them will be skipped"; fi
	rm -rf dist
	$(PIP) install --quiet build
	$(PY) -m build --wheel --outdir dist . > dist-build.log 2>&1 || (cat dist-build.log; exit 1)
	rm -f dist-build.log
	$(PIP) install --quiet --force-reinstall --no-deps dist/*.whl
	$(PIP) install --quiet "$$(ls dist/*.whl)[$(EXTRAS),dev]"
	cd tests && MLIPZOO_EXPECT_WHEEL=1 ../$(VENV)/bin/pytest -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) dist build *.egg-info
