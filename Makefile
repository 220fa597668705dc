# Two commands on a fresh machine:  `make book`  (build the executed book)  and  `make test`.
PYTHON ?= python3
export TQDM_DISABLE := 1
# The chapters' models are small: one intra-op thread per process avoids oversubscribing the cores.
export OMP_NUM_THREADS ?= 1
# Data for the image chapters: $LIDVAE_DATA, else ../shared/data when it exists (the project's machines).
ifeq ($(origin LIDVAE_DATA), undefined)
ifneq ($(wildcard ../shared/data),)
export LIDVAE_DATA := $(abspath ../shared/data)
endif
endif

.PHONY: install book test unit pairs clean

.make/installed: requirements.txt pyproject.toml
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m ipykernel install --user --name python3 >/dev/null
	mkdir -p .make && touch $@

install: .make/installed

BUILD = jupyter-book build --all -W -n --keep-going .
PYTEST = $(PYTHON) -m pytest tests book --nbval-lax --nbval-current-env --nbval-cell-timeout=900

book: install
	$(BUILD)

# Every test run is a first run: a new, empty user cache (XDG_CACHE_HOME), so once-a-day warnings and cached
# state that a fresh machine lacks show up here too (ArviZ's daily notice once broke only fresh machines' builds).
test: install
	@cache=$$(mktemp -d -t lidvae-cache.XXXXXX); echo "make test: fresh user cache $$cache"; \
	export XDG_CACHE_HOME=$$cache; $(BUILD) && $(PYTEST); rc=$$?; rm -rf $$cache; exit $$rc

unit: install
	$(PYTHON) -m pytest tests

# Regenerate every notebook's .ipynb from its MyST .md (keeps cell ids; never the other way round).
pairs:
	jupytext --to ipynb --update book/[0-9]*.md book/errata.md

clean:
	jupyter-book clean --all .
