# One entry point for people and CI.
SHELL := /bin/bash
ENV ?=
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/node_modules/.bin:$(CURDIR)/$(VENV)/bin:$(PATH)
export CDK_DISABLE_CLI_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1
CDK := npx --no-install cdk
ENV_CTX := $(if $(ENV),-c env=$(ENV),)

.PHONY: help setup synth test pytest rehearse rehearse-deploy rehearse-grow lint linted-assembly diff plan deploy status rollback clean snapshot-update deploy-local local-down cost diagrams bench

help:
	@echo "make deploy-local [ENV=name]  deploy every environment (or one) to a local AWS emulator and verify it"
	@echo "make test                     set up and run every test (boot rehearsal, nag, cfn-lint, snapshots, lab, emulator deploy)"
	@echo "make rehearse [ENV=name]      boot every kind of server from the synthesized templates under real systemd"
	@echo "make rehearse-deploy [ONLY=fleet|good|single]  roll out new app versions under load on real servers (zero failed requests)"
	@echo "make rehearse-grow            grow dev 1 -> 2 -> 3 -> 4 with real data on real servers (every row counted)"
	@echo "make synth [ENV=name]         synthesize CloudFormation (no credentials needed)"
	@echo "make diff ENV=name            cdk diff against your AWS account"
	@echo "make plan ENV=name            before a deploy: what is created/replaced/deleted, what happens to the data,"
	@echo "                              downtime, cost before and after (JSON=1; ACCEPT_DATA_LOSS=1 exits 0 anyway)"
	@echo "make deploy ENV=name          cdk deploy to your AWS account (keeps the assembly: .local/deploys/)"
	@echo "make status ENV=name          stack status, AppVersion, the version each server runs, recorded deploys"
	@echo "make rollback ENV=name [TO=n] deploy the previous recorded assembly again (nothing rebuilt)"
	@echo "                              (plan/status/rollback go to the local emulator when AWS_ENDPOINT_URL is set)"
	@echo "make lab [ENV=name] [PROCESSES=N STAGE=4 PORT=8080]  run one server's app tier (an environment's [app]) locally"
	@echo "make bench                    load, synth and deploy benchmarks"
	@echo "make bench-rollout [RUNS=n]   the good-version rollout of a 3-server fleet: failed requests, capacity, p99, time"
	@echo "make bench-grow               dev grown 1 -> 2 with 1 GiB: client errors, carry time, throughput vs pg_dump | psql"
	@echo "make bench-synth [RUNS=n]     cdk synth of every environment against an empty CDK app"
	@echo "make cost [ENV=name]          monthly cost estimate per environment"
	@echo "make diagrams                 architecture diagrams from the synthesized templates"
	@echo "make local-down               stop the local AWS emulator"

setup:
	@scripts/setup.sh

# cfn-lint is the template check (app.py turns CDK's built-in validator off: bench/synth.py).
synth: setup
	$(CDK) synth $(ENV_CTX) --quiet
	$(VENV)/bin/cfn-lint cdk.out/*.template.json

lint: setup
	$(VENV)/bin/ruff check .
	$(CDK) synth $(ENV_CTX) --quiet
	$(VENV)/bin/cfn-lint cdk.out/*.template.json

# The rehearsal first (it needs root: containers), then every other test; pytest's summary closes the run.
test: setup
	$(PY) -m rehearsal
	$(PY) -m rehearsal.deploy
	$(PY) -m rehearsal.grow
	$(VENV)/bin/python -m pytest

# pytest alone (no containers, no root): for a quick loop, or a CI runner that rehearses with sudo.
pytest: setup
	$(VENV)/bin/python -m pytest

rehearse: setup
	$(PY) -m rehearsal $(if $(ENV),--env $(ENV),)

# Rollouts under load on real servers behind HAProxy: good version, bad version rolled back, single servers.
rehearse-deploy: setup
	$(PY) -m rehearsal.deploy $(if $(ONLY),--only $(ONLY),)

# dev grown 1 -> 2 -> 3 -> 4 with real data on real servers: every row counted, the data carried at 1 -> 2.
rehearse-grow: setup
	$(PY) -m rehearsal.grow

# app.py skips CDK's built-in template validation (bench/synth.py: it was most of a synth's time);
# cfn-lint is the check instead, so what is diffed or deployed is the assembly cfn-lint passed.
ASSEMBLY = cdk.out.$(ENV)
# The git commit goes into the AppVersion as context (the stack does not run git: in-process synths stay stable).
COMMIT_CTX = $(shell $(PY) -m tools.deploys commit 2>/dev/null | sed 's/^./-c app-commit=&/')

linted-assembly: setup
	@test -n "$(ENV)" || { echo "usage: make diff|deploy ENV=name"; exit 2; }
	rm -rf $(ASSEMBLY)
	$(CDK) synth -c env=$(ENV) $(COMMIT_CTX) --quiet --output $(ASSEMBLY)
	$(VENV)/bin/cfn-lint $(ASSEMBLY)/*.template.json

diff: linted-assembly
	$(CDK) diff --app $(ASSEMBLY) --all

# Recorded only when the deploy succeeded (make stops at a failed command).
deploy: linted-assembly
	$(CDK) deploy --app $(ASSEMBLY) --all --require-approval broadening
	$(PY) -m tools.deploys record --env $(ENV) --assembly $(ASSEMBLY)

# Synthesizes in-process (offline) and compares with the deployed stack's template; exits 3 when data would be lost.
plan: setup
	@test -n "$(ENV)" || { echo "usage: make plan ENV=name [JSON=1] [ACCEPT_DATA_LOSS=1]"; exit 2; }
	@$(PY) -m tools.plan --env $(ENV) $(if $(JSON),--json,) $(if $(ACCEPT_DATA_LOSS),--accept-data-loss,)

status: setup
	@test -n "$(ENV)" || { echo "usage: make status ENV=name"; exit 2; }
	@$(PY) -m tools.deploys status --env $(ENV)

rollback: setup
	@test -n "$(ENV)" || { echo "usage: make rollback ENV=name [TO=n]"; exit 2; }
	$(PY) -m tools.deploys rollback --env $(ENV) $(if $(TO),--to $(TO),)

clean:
	rm -rf cdk.out cdk.out.* .pytest_cache

# --- app tier (lab, bench) ---
STAGE ?=
PROCESSES ?=
PORT ?= 8080
.PHONY: lab bench-load bench-synth bench-rollout bench-grow

# PROCESSES empty: one copy per core (the lab's default).
lab: setup
	$(PY) -m app_tier.lab $(if $(ENV),--env $(ENV)) $(if $(STAGE),--stage $(STAGE)) $(if $(PROCESSES),--processes $(PROCESSES)) --port $(PORT)

bench-load: setup
	$(PY) -m bench.load

# `cdk synth` of every environment against an empty CDK app, both through the pinned CLI (RUNS each, default 5).
bench-synth: setup
	$(PY) -m bench.synth $(if $(RUNS),--runs $(RUNS),)

# The good-version rollout of a 3-server fleet (the deploy rehearsal's, needs root).
bench-rollout: setup
	$(PY) -m bench.rollout $(if $(RUNS),--runs $(RUNS),)

# dev grown 1 -> 2 with about 1 GiB (the growth rehearsal's, needs root): errors, carry time, vs pg_dump | psql.
bench-grow: setup
	$(PY) -m bench.grow

# --- local AWS emulator ---
# `cdk deploy` for real, to moto's server on loopback; see tools/local_aws/.
deploy-local: setup
	$(PY) -m tools.local_aws all $(if $(ENV),--env $(ENV),)

local-down:
	$(PY) -m tools.local_aws down

snapshot-update: setup
	$(VENV)/bin/python -m pytest tests/test_snapshots.py --snapshot-update -q

# --- cost and diagrams ---
# Both read the synthesized templates (cdk.out), synthesizing first when they are older than the code.
cost: setup
	$(PY) -m tools.reports.cost $(if $(ENV),--env $(ENV),)

diagrams: setup
	$(PY) -m tools.reports.diagrams $(if $(ENV),--env $(ENV),)

# --- benchmarks ---
bench: bench-load bench-synth bench-rollout bench-grow
	$(PY) -m bench.deploy_local
