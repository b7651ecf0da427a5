"""What the end-to-end tasks write down, shared by the test DAG files (the
DAGs folder is on the tasks' sys.path). This file defines no workflow, so the
processor's safe mode skips it."""
import os
import socket


def pod_name():
    """The pod of the Celery worker running the task: the container's hostname."""
    return socket.gethostname()


def append_line(path, line):
    """Append one line; one write() with O_APPEND, so concurrent writers never mix lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)
