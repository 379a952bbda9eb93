from django.urls import path

from . import learn_views, metrics_view, views

urlpatterns = [
    path("generate/", views.generate, name="generate"),
    path("jobs/", views.job_submit, name="job_submit"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job_detail"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job_cancel"),
    path("learn/", learn_views.learn_page, name="learn"),
    path("learn/forward/", learn_views.forward, name="learn_forward"),
    path("staff/queue/", views.staff_queue, name="staff_queue"),
    path("metrics", metrics_view.metrics_page, name="metrics"),
]
