# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean install migration

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/emma demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) emma.db emma.db-wal emma.db-shm

# New Alembic revision from the models: make migration MSG="what changed" REV=0003
migration: $(STAMP)
	rm -f /tmp/emma-migration.db
	$(BIN)/python -c "from emma.db import upgrade; upgrade('sqlite:////tmp/emma-migration.db')"
	$(BIN)/python -c "from alembic import command; from emma.db import alembic_config; \
	  command.revision(alembic_config('sqlite:////tmp/emma-migration.db'), message='$(MSG)', autogenerate=True, rev_id='$(REV)')"
	sed -i 's/astext_type=Text()/astext_type=sa.Text()/g' src/emma/migrations/versions/$(REV)_*.py
