"""The Celery app the elastic-worker tests run: one task that records each execution."""
import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("EW_TEST_BROKER", "redis://127.0.0.1:16379/7")
QUEUE = os.environ.get("EW_TEST_QUEUE", "ewtest")

app = Celery("ewtest", broker=BROKER)
app.conf.update(
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=1,
    task_acks_late=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="ewtest.work", bind=True)
def work(self, token, seconds):
    r = redis.Redis.from_url(BROKER)
    r.rpush(QUEUE + ":started", "%s %s %f" % (token, self.request.hostname, time.time()))
    time.sleep(seconds)
    r.rpush(QUEUE + ":done", "%s %s %f" % (token, self.request.hostname, time.time()))
    return token
