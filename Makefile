# Two commands: `make run` starts the service on the embedded default, `make test` passes the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): setup.cfg setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: install
	$(BIN)/python -m webhook_app.devserver

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# `make bench` on the embedded default; `make bench BENCH_ARGS=--servers` on PostgreSQL + RabbitMQ,
# started as .ci/run starts them (or the ones TEST_POSTGRES_URL and TEST_AMQP_URL already name).
bench: install
	@command -v wrk >/dev/null 2>&1 || { echo "make bench: wrk is not installed. It is the benchmarks' load" \
	  "generator, a Debian package: sudo apt-get install wrk" >&2; exit 1; }
	@case " $(BENCH_ARGS) " in \
	  *" --servers "*) \
	    if [ -n "$$TEST_POSTGRES_URL" ] && [ -n "$$TEST_AMQP_URL" ]; then $(BIN)/python -m bench.run $(BENCH_ARGS); \
	    else bash -c 'source .ci/services.sh || exit 1; trap shop_ci_services_stop EXIT; \
	      $(BIN)/python -m bench.run $(BENCH_ARGS)'; fi ;; \
	  *) $(BIN)/python -m bench.run $(BENCH_ARGS) ;; \
	esac

clean:
	rm -rf $(VENV) instance
