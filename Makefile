# personafleet: `make demo` runs the whole pipeline on the embedded defaults; `make test` runs the tests.
VENV  := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test:
	PERSONA_WITH_POSTGRES=1 bash scripts/setup.sh
	$(VENV)/bin/pytest

clean:
	rm -rf .persona build *.egg-info
