# featlib — run `just` to list recipes.
set positional-arguments := true

python := if path_exists(".venv/bin/python") == "true" { ".venv/bin/python" } else { "python" }

[doc("List the recipes")]
default:
    @just --list

[doc("Build a dataset (no args: the synthetic demo into data/datasets/demo); flags go to pipelines.build_dataset")]
[group("pipelines")]
build-dataset *args:
    {{python}} -m pipelines.build_dataset "$@"

[doc("Load recorded captures (.jsonl/.jsonl.gz) into the raw store: just ingest FILE... [--data-dir DIR]")]
[group("pipelines")]
ingest *args:
    {{python}} -m pipelines.ingest "$@"

[doc("Fetch history from Bybit into the raw store: just backfill SYMBOL START END [--types klines,funding,trades] [--data-dir DIR]")]
[group("pipelines")]
backfill *args:
    {{python}} -m pipelines.backfill "$@"

[doc("Run the live service (FastStream on RabbitMQ + HTTP on :8000); settings: FEATLIB_* env")]
[group("service")]
serve *args:
    {{python}} -m uvicorn --factory service.app:create_app --host 127.0.0.1 --port 8000 "$@"

[doc("Publish recorded captures to the ws-gateway queues: just replay FILE... [--speed N]")]
[group("service")]
replay *args:
    {{python}} -m pipelines.replay "$@"

[doc("Run the test suite; arguments go to pytest")]
[group("dev")]
test *args:
    {{python}} -m pytest "$@"

[doc("Benchmarks: writes bench/results.json and bench/results.md")]
[group("dev")]
bench *args:
    {{python}} -m bench.run "$@"

[doc("Lint and format check (ruff)")]
[group("dev")]
lint:
    {{python}} -m ruff check .
    {{python}} -m ruff format --check .

[doc("Open the feature explorer notebook (marimo edit)")]
[group("research")]
notebook name="explore_features":
    {{python}} -m marimo edit notebooks/{{name}}.py
