from celery import shared_task


@shared_task(name="studio.ping")
def ping(value: str) -> str:
    """Echo back: lets a health check or a test prove a worker is consuming the queue."""
    return f"pong:{value}"
