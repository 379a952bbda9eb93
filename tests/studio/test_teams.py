import pytest
from django.urls import reverse

from studio import services
from studio.models import Team

pytestmark = pytest.mark.django_db


def test_it_creates_a_team_with_its_creator_as_owner(client, alice):
    client.force_login(alice)
    response = client.post(reverse("team_list"), {"name": "Shapes"})
    team = Team.objects.get(name="Shapes")
    assert response.status_code == 302
    assert team.role_of(alice) == "owner"


def test_owner_adds_and_removes_members(client, alice, bob, carol, team):
    client.force_login(alice)
    client.post(reverse("team_add_member", args=[team.pk]), {"username": "carol"})
    assert team.role_of(carol) == "member"
    client.post(reverse("team_member_update", args=[team.pk, carol.pk]), {"action": "remove"})
    assert team.role_of(carol) is None


def test_adding_an_unknown_user_says_so(client, alice, team):
    client.force_login(alice)
    response = client.post(
        reverse("team_add_member", args=[team.pk]), {"username": "nobody"}, follow=True
    )
    assert "There is no user called “nobody”." in response.content.decode()


def test_a_member_cannot_change_members(client, bob, carol, team):
    client.force_login(bob)
    client.post(reverse("team_add_member", args=[team.pk]), {"username": "carol"})
    assert team.role_of(carol) is None
    with pytest.raises(services.TeamError):
        services.team_add_member(team=team, actor=bob, username="carol")


def test_a_stranger_gets_404(client, carol, team):
    client.force_login(carol)
    assert client.get(reverse("team_detail", args=[team.pk])).status_code == 404
    assert client.post(reverse("team_leave", args=[team.pk])).status_code == 404
    response = client.post(reverse("team_add_member", args=[team.pk]), {"username": "carol"})
    assert response.status_code == 404
    assert team.role_of(carol) is None


def test_a_user_sees_only_their_own_teams(client, alice, carol, team):
    services.team_create(owner=carol, name="Carol's secret team")
    client.force_login(alice)
    page = client.get(reverse("team_list")).content.decode()
    assert "Shapes" in page
    assert "Carol&#x27;s secret team" not in page and "Carol's secret team" not in page


def test_a_member_leaves(client, bob, team):
    client.force_login(bob)
    client.post(reverse("team_leave", args=[team.pk]))
    assert team.role_of(bob) is None


def test_the_last_owner_cannot_leave_while_others_remain(alice, team):
    with pytest.raises(services.TeamError, match="needs an owner"):
        services.team_leave(team=team, user=alice)


def test_owner_promotes_a_member_who_can_then_manage(alice, bob, carol, team):
    services.team_set_role(team=team, actor=alice, user=bob, role="owner")
    services.team_add_member(team=team, actor=bob, username="carol")
    assert team.role_of(carol) == "member"
    services.team_leave(team=team, user=alice)
    assert team.role_of(alice) is None


def test_the_last_member_leaving_deletes_the_team(alice):
    team = services.team_create(owner=alice, name="Solo")
    services.team_leave(team=team, user=alice)
    assert not Team.objects.filter(pk=team.pk).exists()


def _private_image(owner):
    from gallery.models import Image
    from generation.models import Job, Output

    job = Job.objects.create(owner=owner, recipe={"prompt": "a circle"}, status="succeeded")
    output = Output.objects.create(
        job=job, index=0, image="outputs/none.png", recipe={}, width=8, height=8
    )
    return Image.objects.create(output=output, owner=owner, prompt="a circle", seed=7)


@pytest.mark.parametrize("team_field", ["abc", "1", "x" * 5000, "00000000-0000-0000-0000"])
def test_a_team_field_that_is_not_a_uuid_is_refused_by_name_not_a_500(
    client, alice, team, team_field
):
    image = _private_image(alice)
    client.force_login(alice)
    response = client.post(
        reverse("image_visibility", args=[image.pk]),
        {"visibility": "team", "team": team_field}, follow=True,
    )
    assert response.status_code == 200
    assert "Choose one of your teams to share with." in response.content.decode()
    image.refresh_from_db()
    assert (image.visibility, image.team_id) == ("private", None)
    response = client.post(
        reverse("collection_create"),
        {"name": "Ours", "visibility": "team", "team": team_field}, follow=True,
    )
    assert response.status_code == 200
    assert "Choose one of your teams to share with." in response.content.decode()
    assert not alice.collections.exists()


def test_the_team_door_answers_none_for_an_id_that_is_not_a_uuid(alice, team):
    assert services.get_team_for_user(user=alice, team_id="abc") is None
    assert services.get_team_for_user(user=alice, team_id=str(team.pk)) == team
