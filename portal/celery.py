"""The Celery app: configured from Django settings (CELERY_*), tasks found in each app.

Worker and beat: `celery -A portal worker -B` (embedded) or separate `celery -A portal worker` and
`celery -A portal beat` processes; the broker is REDIS_URL when set, else files under ./data/celery.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
