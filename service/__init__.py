"""The FastStream + HTTP service front door (live features over RabbitMQ).

It imports featlib and nothing else of this repository. Its consumers, scheduler and HTTP
API are tracked as their own issue; until then this package holds no code.
"""
