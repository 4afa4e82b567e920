# SAIH-cosmo: `make demo` runs a real small end-to-end job, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first and pinned, so a CPU machine never resolves a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,slurm,mpi
DEMO_DIR ?= outputs/demo
export WANDB_MODE ?= offline

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# generate -> sweep (small + medium, 1 and 2 emulated nodes, two fractions) -> one short
# convergence job of the small model (does it beat the baselines?) -> report.
# Idempotent: existing simulations and finished jobs are kept; the report is rewritten.
# The report runs even when a job failed, and then make exits non-zero.
demo: install
	$(BIN)/python generate.py sim=tiny campaign.n_sims=16 paths.data_dir=$(DEMO_DIR)/data
	$(BIN)/python train.py -m experiment=demo data.dir=$(DEMO_DIR)/data \
		hydra.sweep.dir=$(DEMO_DIR)/sweep; status=$$?; \
	$(BIN)/python train.py experiment=demo_convergence data.dir=$(DEMO_DIR)/data \
		hydra.run.dir=$(DEMO_DIR)/convergence || status=1; \
	$(BIN)/python report.py 'sweep_dir=[$(DEMO_DIR)/sweep,$(DEMO_DIR)/convergence]' \
		report.out_dir=$(DEMO_DIR)/sweep/report || status=1; \
	echo "demo: metrics in $(DEMO_DIR)/{sweep/*,convergence}/metrics.json, report in $(DEMO_DIR)/sweep/report/summary.md"; \
	exit $$status

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs
