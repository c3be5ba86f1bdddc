"""Opt-in URLs: ``path('scheduler/', include('django_rq_scheduled.urls'))`` serves ``scheduler/health/``."""

from __future__ import annotations

from django.urls import path

from .health_views import health

app_name = 'django_rq_scheduled'
urlpatterns = [path('health/', health, name='health')]
