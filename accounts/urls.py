from django.urls import path

from accounts import views

app_name = "accounts"

urlpatterns = [
    path("", views.key_list, name="keys"),
    path("new/", views.key_create, name="create"),
    path("<int:pk>/", views.key_detail, name="detail"),
    path("<int:pk>/revoke/", views.key_revoke, name="revoke"),
    path("login/", views.login, name="login"),
    path("logout/", views.logout, name="logout"),
]
