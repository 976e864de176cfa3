"""The service: one process with a FastStream RabbitBroker (ws-gateway queues in,
`features.live` and `features.dataset.ready` out) and a FastAPI app (health, latest vectors,
stats, dataset builds and downloads, model evaluation, backfill jobs).

It imports featlib and nothing else of this repository: app (wiring), pipeline (messages ->
featlib.live -> vectors), api and jobs_api (HTTP), jobs (worker threads), gateway (ws-gateway's
REST API), settings (FEATLIB_* environment), metrics (Prometheus).
"""
