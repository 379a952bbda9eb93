from django.urls import path

from . import views

urlpatterns = [
    path("gallery/", views.gallery_public, name="gallery_public"),
    path("gallery/mine/", views.gallery_mine, name="gallery_mine"),
    path("gallery/teams/<uuid:team_id>/", views.gallery_team, name="gallery_team"),
    path("images/<uuid:image_id>/", views.image_detail, name="image_detail"),
    path("images/<uuid:image_id>.png", views.image_file, name="image_file"),
    path("images/<uuid:image_id>/visibility/", views.image_visibility, name="image_visibility"),
]
