"""python manage.py bagou: runs the events.py handlers of every installed
app for the events bagou-server forwards (bagou.worker)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import close_old_connections

from ... import worker


class Command(BaseCommand):
    help = ("Runs the bagou.events handlers (events.py of every installed "
            "app) for the events bagou-server forwards through RabbitMQ.")

    def add_arguments(self, parser: Any) -> None:
        worker.add_options(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        worker.setup_logging(options["log_level"])
        # Each event is a unit of work like a request: database
        # connections past their CONN_MAX_AGE or broken are dropped.
        w = worker.Worker(concurrency=options["concurrency"],
                          before_event=close_old_connections,
                          after_event=close_old_connections)
        worker.install_signals(w)
        w.run()
