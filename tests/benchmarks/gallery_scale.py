"""Every gallery listing's client time with a grown gallery, over HTTP, in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python tests/benchmarks/gallery_scale.py [--images 100000]
        [--runs 41] [--deep 300] [--keep] [--db studio_gallery_scale]

On a database of its own (`studio_gallery_scale`, recreated unless `--keep` finds it filled
with as many images; it then only migrates it and runs ANALYZE) it bulk-inserts `images`
gallery images from 20 users, as the app stores them: a job per batch of 1 to 4 with its
recipe (built by `generation.recipes.recipe_for`, the submit path's own function; three of
four models without trained betas, as real checkpoints have none), an output per image with
its own recipe, an image row with its search vector; a mix of private, team and public
images (a few hidden), likes, two teams of ten and three collections.
No image files: no listing reads one.

Then it starts the web server (uvicorn, production settings as serving_overhead.py sets them),
signs in one user (a member of a team, owner of a collection) with a session cookie and an API
token, and times each listing `runs` times after two warm-up requests, over one keep-alive
connection: the public gallery newest and most liked, first page and page 300 (reached by
following the pages' own "Older" links, or the API's `next` links where it gives them, else
`offset`), search, seed and model
filters, "My images", the team's gallery, collections, and the images API with the same
filters. It prints p50 and p95 per listing in milliseconds; the last line is the JSON object
{listing: {"p50": ms, "p95": ms}, "_setup": {...}}.
"""

import argparse
import json
import os
import random
import re
import secrets
import statistics
import sys
import time
from datetime import timedelta
from html import unescape
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving_overhead import ROOT, free_port, start, wait_http  # noqa: E402

DB_NAME = "studio_gallery_scale"
USERS = 20
PASSWORD = "gallery-scale-password"
DEEP_PAGE = 300
PROMPT_WORDS = (
    "red blue green golden silver crimson misty ancient futuristic quiet stormy neon "
    "castle forest river mountain city harbor desert garden temple lighthouse village "
    "dragon fox owl whale cat robot knight wizard sailor dancer astronaut "
    "sunset dawn night winter autumn spring rain snow fog "
    "portrait landscape painting watercolor photograph sketch illustration render "
    "detailed cinematic dramatic soft vibrant moody minimal surreal"
)
WORDS = PROMPT_WORDS.split()
RARE_WORD = "zeppelin"  # in about one prompt of 2,000
MODELS = ("studio-demo", "sd15-realistic", "sd15-anime", "sdxl-base")
SAMPLERS = ("Euler a", "DDIM", "DPM++ 2M", "Euler")


def setup_django(*, db: str, keep_images: int | None) -> bool:
    """Point Django at the database `db` with production settings; True when it is kept as
    it was (`keep_images` given and it already holds that many images)."""
    os.environ["DATABASE_URL"] = f"postgres://postgres@127.0.0.1:5432/{db}"
    # As serving_overhead.py: production settings (DEBUG keeps every query it runs), TLS
    # settings off for plain HTTP on loopback.
    os.environ.update(
        DEBUG="0", SECRET_KEY=secrets.token_urlsafe(50), SECURE_SSL_REDIRECT="0",
        SESSION_COOKIE_SECURE="0", CSRF_COOKIE_SECURE="0", SECURE_HSTS_SECONDS="0",
    )
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["DJANGO_SETTINGS_MODULE"] = "studio.settings"
    sys.path.insert(0, str(ROOT))
    kept = keep_images is not None and existing_images(db) == keep_images
    if not kept:
        import psycopg

        with psycopg.connect(dbname="postgres", user="postgres", host="127.0.0.1",
                             autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {db}")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return kept


def existing_images(db: str) -> int | None:
    """How many images the database `db` holds, or None without one."""
    import psycopg

    try:
        with psycopg.connect(dbname=db, user="postgres", host="127.0.0.1") as conn:
            return conn.execute("SELECT count(*) FROM gallery_image").fetchone()[0]
    except psycopg.Error:
        return None


def base_recipes() -> dict[tuple[str, str], dict]:
    """A recipe per (model, sampler) as the submit path builds it, from the demo model: the
    demo model's scheduler carries its trained betas (14.6 kB of JSON); the other names stand
    for ordinary checkpoints, whose scheduler configs carry none."""
    from generation import recipes
    from generation.job_request import JobRequest

    built = {}
    for sampler in SAMPLERS:
        recipe = recipes.recipe_for(JobRequest(prompt="x", sampler=sampler, seed=1))
        for model in MODELS:
            copy = json.loads(json.dumps(recipe))
            copy["model"]["name"] = model
            if model != "studio-demo":
                copy["model"]["source"] = f"/models/{model}.safetensors"
                copy["model"]["hash"] = secrets.token_hex(32)
                copy["scheduler"]["config"].pop("trained_betas", None)
                copy["scheduler"]["config"]["beta_schedule"] = "scaled_linear"
            built[model, sampler] = copy
    return built


def prompt(rng: random.Random) -> str:
    words = rng.sample(WORDS, rng.randint(4, 9))
    if rng.random() < 1 / 2000:
        words.insert(rng.randrange(len(words)), RARE_WORD)
    return "a " + " ".join(words)


def fill(images: int, seed: int = 1) -> dict:
    """Insert the gallery: users, teams, jobs, outputs, images, likes, collections. Returns
    what the timed requests need (ids, the signed-in user's token)."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from gallery.models import Collection, Image, Like, Visibility
    from gallery.services import prompt_vector
    from generation.models import Job, Output
    from studio.models import Membership, Team

    rng = random.Random(seed)
    users = [get_user_model().objects.create_user(f"artist-{i:02d}", password=PASSWORD)
             for i in range(USERS)]
    teams = [Team.objects.create(name=f"Studio {n}") for n in ("A", "B")]
    for i, user in enumerate(users):
        Membership.objects.create(team=teams[i * 2 // USERS], user=user,
                                  role="owner" if i % 10 == 0 else "member")
    recipes = base_recipes()
    now, made = timezone.now(), 0
    # About a year of history, newest last; a batch's images share their job's time.
    spacing = timedelta(days=365) / max(images, 1)
    while made < images:
        jobs, outputs, rows = [], [], []
        with transaction.atomic():
            while made < images and len(rows) < 4000:
                owner_index = rng.randrange(USERS)
                owner = users[owner_index]
                batch = min(rng.choice((1, 1, 2, 4)), images - made)
                text = prompt(rng)
                model, sampler = rng.choice(MODELS), rng.choice(SAMPLERS)
                recipe = {**recipes[model, sampler], "prompt": text, "batch_size": batch,
                          "seed": rng.randrange(2**32)}
                created = now - spacing * (images - made)
                job = Job(owner=owner, recipe=recipe, status=Job.Status.SUCCEEDED,
                          total_steps=recipe["steps"], step=recipe["steps"],
                          queued_at=created, started_at=created, finished_at=created)
                jobs.append(job)
                roll = rng.random()
                visibility = (Visibility.PUBLIC if roll < 0.5 else
                              Visibility.TEAM if roll < 0.7 else Visibility.PRIVATE)
                for index in range(batch):
                    own = {**recipe, "batch_index": index}
                    output = Output(job=job, index=index, image=f"outputs/{job.pk}/{index}.png",
                                    recipe=own, width=recipe["width"], height=recipe["height"],
                                    created=created)
                    outputs.append(output)
                    likes = int(rng.paretovariate(1.3)) - 1 if visibility == "public" else 0
                    rows.append(Image(
                        output=output, owner=owner, visibility=visibility,
                        team=teams[owner_index * 2 // USERS] if visibility == "team" else None,
                        prompt=text, model_name=model, sampler=sampler,
                        seed=recipe["seed"] + index, search=prompt_vector(text),
                        hidden=visibility == "public" and rng.random() < 0.01,
                        like_count=min(likes, USERS), created=created,
                    ))
                made += batch
            Job.objects.bulk_create(jobs, batch_size=1000)
            Output.objects.bulk_create(outputs, batch_size=1000)
            Image.objects.bulk_create(rows, batch_size=1000)
            Like.objects.bulk_create(
                [Like(user=user, image=row, created=row.created) for row in rows
                 for user in rng.sample(users, row.like_count)], batch_size=5000)
        print(f"  {made:,} images", file=sys.stderr, flush=True)
    return collections_and_analyze(users, teams, rng, connection, Collection, Image)


def collections_and_analyze(users, teams, rng, connection, Collection, Image) -> dict:
    """Three collections of the signed-in user's (50, 500 and 2,000 images from what she may
    see), then VACUUM ANALYZE, as autovacuum would have run on a gallery this old."""
    from gallery.models import CollectionItem

    viewer = users[0]
    visible = list(Image.objects.visible_to(viewer).values_list("pk", flat=True)[:20000])
    made = {}
    for size, visibility in ((50, "private"), (500, "team"), (2000, "public")):
        collection = Collection.objects.create(
            owner=viewer, name=f"{size} favourites", visibility=visibility,
            team=teams[0] if visibility == "team" else None)
        chosen = rng.sample(visible, min(size, len(visible)))
        CollectionItem.collect(collection, Image.objects.filter(pk__in=chosen))
        made[size] = str(collection.pk)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    return {"collections": made}


def viewer_state() -> dict:
    """The ids the requests need, read back (also from a kept database)."""
    from django.contrib.auth import get_user_model

    from gallery.models import Collection, Image
    from studio.models import Team
    from studio.services import token_create

    viewer = get_user_model().objects.get(username="artist-00")
    sample = Image.objects.public().order_by("created")[len(WORDS)]
    _, token = token_create(user=viewer, name=f"bench {time.time()}")
    return {
        "team": str(Team.objects.get(name="Studio A").pk), "token": token,
        "collections": {c.name.split()[0]: str(c.pk)
                        for c in Collection.objects.filter(owner=viewer)},
        "seed": sample.seed, "model": "sdxl-base", "images": Image.objects.count(),
    }


OLDER = re.compile(r'<a [^>]*href="([^"]+)"[^>]*>Older</a>')


def deep_page(http, base: str, path: str, pages: int) -> str:
    """The URL of a listing's page `pages`, reached by following its "Older" links as a
    reader would."""
    url = base + path
    for _ in range(pages - 1):
        found = OLDER.search(http.get(url).text)
        if found is None:
            raise RuntimeError(f"{path} has fewer than {pages} pages")
        link = unescape(found.group(1))
        url = base + path.split("?")[0] + link if link.startswith("?") else base + link
    return url


def deep_api(http, base: str, query: str, pages: int, limit: int = 24) -> str:
    """The URL of the API listing's page `pages`: its `next` links where it gives them, else
    `offset`."""
    url = f"{base}/api/v1/images?{query}&limit={limit}"
    answer = http.get(url).json()
    if "next" not in answer:
        return f"{url}&offset={(pages - 1) * limit}"
    for _ in range(pages - 1):
        url = base + answer["next"]
        answer = http.get(url).json()
    return url


def listings(state: dict, http, api, base: str, deep: int) -> dict[str, tuple]:
    """(client, url) per listing name; `deep` is the deep pages' number."""
    team, seed, model = state["team"], state["seed"], state["model"]
    common = WORDS[0]  # in about one prompt of eleven
    pages = {
        "page public new": "/gallery/",
        "page public liked": "/gallery/?sort=liked",
        "page search common word": f"/gallery/?q={common}",
        "page search two words": f"/gallery/?q={WORDS[1]}+{WORDS[12]}",
        "page search rare word": f"/gallery/?q={RARE_WORD}",
        "page search liked": f"/gallery/?q={common}&sort=liked",
        "page seed": f"/gallery/?seed={seed}",
        "page model": f"/gallery/?model={model}",
        "page mine": "/gallery/mine/",
        "page team": f"/gallery/teams/{team}/",
        "page mine search": f"/gallery/mine/?q={common}",
        **{f"page collection of {size}": f"/collections/{pk}/"
           for size, pk in state["collections"].items()},
    }
    timed = {name: (http, base + path) for name, path in pages.items()}
    timed["page public new, anonymous"] = (None, base + "/gallery/")
    timed["page public new, deep"] = (http, deep_page(http, base, "/gallery/", deep))
    timed["page public liked, deep"] = (http, deep_page(http, base, "/gallery/?sort=liked",
                                                        deep))
    timed["page mine, deep / 2"] = (http, deep_page(http, base, "/gallery/mine/",
                                                    max(2, deep // 2)))
    queries = {
        "api public new": "", "api public liked": "sort=liked", "api search": f"q={common}",
        "api search rare word": f"q={RARE_WORD}", "api seed": f"seed={seed}",
        "api model": f"model={model}", "api mine": "scope=mine",
        "api team": f"scope=team&team={team}", "api mine search": f"scope=mine&q={common}",
    }
    for name, query in queries.items():
        timed[name] = (api, f"{base}/api/v1/images?{query}")
    timed["api public new, deep"] = (api, deep_api(api, base, "scope=public", deep))
    timed["api public liked, deep"] = (api, deep_api(api, base, "sort=liked", deep))
    return timed


def time_listing(client, url: str, runs: int) -> dict:
    import requests

    client = client or requests.Session()
    for _ in range(2):
        response = client.get(url)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code}")
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        response.content  # noqa: B018 (read to the end)
        seconds.append(time.perf_counter() - started)
    ms = sorted(s * 1000 for s in seconds)
    return {"p50": round(statistics.median(ms), 2),
            "p95": round(ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))], 2)}


def sign_in(base: str, token: str):
    import requests

    http = requests.Session()
    http.get(f"{base}/accounts/login/")
    http.post(f"{base}/accounts/login/", data={
        "username": "artist-00", "password": PASSWORD,
        "csrfmiddlewaretoken": http.cookies["csrftoken"],
    }, headers={"Referer": f"{base}/accounts/login/"})
    if "sessionid" not in http.cookies:
        raise RuntimeError("could not sign in")
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    return http, api


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=41)
    parser.add_argument("--deep", type=int, default=DEEP_PAGE,
                        help="the page number the deep listings are timed at")
    parser.add_argument("--db", default=DB_NAME, help="the database to (re)create")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the database when it already holds --images images")
    args = parser.parse_args()
    started = time.perf_counter()
    kept = setup_django(db=args.db, keep_images=args.images if args.keep else None)
    if not kept:
        fill(args.images)
    else:
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")  # for what migrations have just added
    fill_seconds = time.perf_counter() - started
    state = viewer_state()
    port = free_port()
    (ROOT / ".run").mkdir(exist_ok=True)
    web = start([sys.executable, "-m", "uvicorn", "studio.asgi:application", "--port",
                 str(port), "--ws", "websockets-sansio", "--log-level", "warning"],
                ROOT / ".run" / "bench-gallery-web.log")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/accounts/login/")
        http, api = sign_in(base, state["token"])
        results = {}
        for name, (client, url) in listings(state, http, api, base, args.deep).items():
            results[name] = time_listing(client, url, args.runs)
            print(f"{name:40s} p50 {results[name]['p50']:7.2f} ms   "
                  f"p95 {results[name]['p95']:7.2f} ms", flush=True)
    finally:
        web.terminate()
        web.wait()
    results["_setup"] = {"images": state["images"], "runs": args.runs, "deep": args.deep,
                         "kept": kept,
                         "setup_seconds": round(fill_seconds, 1)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
