import threading

from studio.celery import app
from studio.tasks import ping


def test_a_real_worker_round_trip_through_redis(celery_worker):
    result = ping.delay("hello")
    assert result.get(timeout=60) == "pong:hello"


def test_celery_has_the_reliability_settings():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_the_result_backend_is_made_once_not_per_thread():
    """Under ASGI each request's sync code runs in a thread of its own: a backend made per
    thread was built again by every submit, to make the result apply_async returns."""
    made = []
    thread = threading.Thread(target=lambda: made.append(app.backend))
    thread.start()
    thread.join()
    assert made[0] is app.backend
