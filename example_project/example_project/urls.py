from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path('admin/', admin.site.urls),
    path('scheduler/', include('django_rq_scheduled.urls')),  # scheduler/health/: see docs/monitoring.rst
    path('', RedirectView.as_view(url='/admin/', permanent=False)),
]
