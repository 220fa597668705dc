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

.PHONY: install book test unit pairs clean exec-key exec-cache execute

.make/installed: requirements.txt pyproject.toml
	$(PYTHON) -m pip install -q torch==2.13.0
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m ipykernel install --user --name python3 >/dev/null
	mkdir -p .make && touch $@

install: .make/installed

BUILD = jupyter-book build --all -W -n --keep-going .
# pytest-xdist: the test modules and the chapter runs of tests/test_determinism.py shared among TEST_WORKERS
# processes (tests/conftest.py keeps each module on one worker and starts the chapter runs first).
TEST_WORKERS ?= 2
PYTEST = $(PYTHON) -m pytest tests -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# One execution of the book. The build keeps every executed chapter in _build/.jupyter_cache (execute_notebooks:
# cache), matched by jupyter-cache on the chapter's code cells; a later build reuses it. What else a chapter's
# outputs depend on is keyed here: the package (code and data files), the committed results and parameter files,
# the pinned requirements, the data folder and the Python. When that key changes, exec-cache clears the cache and
# every chapter runs again (a fresh clone has no cache: CI executes everything).
EXEC_KEY_FILES = lidvae_mini results book/params requirements.txt pyproject.toml
EXEC_KEY = { find $(EXEC_KEY_FILES) -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 2>/dev/null \
	       | LC_ALL=C sort -z | xargs -0 sha256sum; echo "LIDVAE_DATA=$(LIDVAE_DATA)"; $(PYTHON) -VV; } \
	     | sha256sum | cut -c1-64
CACHE_DIR = _build/.jupyter_cache
exec-key:
	@$(EXEC_KEY)

# the key is stored in the cache folder (so `make clean` removes both)
exec-cache:
	@key=$$($(EXEC_KEY)) && \
	if [ "$$(cat $(CACHE_DIR)/lidvae-exec-key 2>/dev/null)" = "$$key" ]; then \
	  echo "execution cache: package unchanged, chapters whose code is unchanged are not run again"; \
	else \
	  if [ -d $(CACHE_DIR) ]; then echo "execution cache: package changed, cleared"; fi; \
	  rm -rf $(CACHE_DIR) && mkdir -p $(CACHE_DIR) && echo "$$key" > $(CACHE_DIR)/lidvae-exec-key; \
	fi

# Before the build renders them: the chapters the cache lacks, TEST_WORKERS at a time (largest notebook first), by
# jupyter-cache's own executor, as the build would run them (in book/, per-cell timeout as in _config.yml). A chapter
# that fails here is left out of the cache; the build then runs it again and fails with its error.
CHAPTER_NOTEBOOKS = $(shell $(PYTHON) -c 'import pathlib, yaml; toc = yaml.safe_load(open("_toc.yml")); \
  files = [c["file"] for part in toc.get("parts", []) for c in part.get("chapters", [])]; \
  nbs = [pathlib.Path(f + ".ipynb") for f in files if pathlib.Path(f + ".ipynb").exists()]; \
  print(*sorted(map(str, nbs), key=lambda p: -pathlib.Path(p).stat().st_size))')
EXECUTE_LOG = $(dir $(CACHE_DIR))execute.log
execute: exec-cache
	@jcache notebook -p $(CACHE_DIR) add $(CHAPTER_NOTEBOOKS) >/dev/null; : > $(EXECUTE_LOG)
	-@printf '%s\n' $(CHAPTER_NOTEBOOKS) | xargs -P $(TEST_WORKERS) -I{} sh -c \
	  'jcache notebook -p $(CACHE_DIR) execute --no-force -v WARNING -t 900 {} >> $(EXECUTE_LOG) 2>&1'
	@echo "execute: the chapters missing from $(CACHE_DIR) were run into it (log: $(EXECUTE_LOG))"

book: install execute
	$(BUILD)

# Every test run is a first run: a new, empty user cache (XDG_CACHE_HOME), so once-a-day warnings and cached
# state that a fresh machine lacks show up here too (ArviZ's daily notice once broke only fresh machines' builds).
# After `make book` the build reuses the executed chapters (see exec-cache); the determinism test
# (tests/test_determinism.py) runs every chapter once more and compares its metrics with the build's.
test: install
	@cache=$$(mktemp -d -t lidvae-cache.XXXXXX); echo "make test: fresh user cache $$cache"; \
	export XDG_CACHE_HOME=$$cache; $(MAKE) --no-print-directory execute && $(BUILD) && $(PYTEST); rc=$$?; \
	rm -rf $$cache; exit $$rc

# Package tests only: no chapter runs, no built book needed except by the rendered-page tests.
unit: install
	$(PYTHON) -m pytest tests -m "not chapter_run"

# Regenerate every notebook's .ipynb from its MyST .md (keeps cell ids; never the other way round).
pairs:
	jupytext --to ipynb --update book/[0-9]*.md book/errata*.md

clean:
	jupyter-book clean --all .
