#!/usr/bin/env python3
"""Generate the sample Telegram Desktop export that ships with the repository.

`examples/sample-export/result.json` is the embedded default for the demo and the tests, so it
is generated rather than hand-written: the same seed gives the same bytes on every machine, and
`--messages 100000` scales it for `benchmarks/prepare.py`.

The chat is a Russian/English DevOps group. Its regulars write in distinct styles; the most
active, Борис Кубов (`user5172839406`), is the obvious persona: he answers almost every question,
always in Russian with English jargon, opens with "ну смотри," and closes with a signature line
("классика.", "работает — не трогай."), so a small model visibly learns his manner.

The export carries the untidy shapes real exports have: service messages (joins, invites, pins,
title edits), media-only messages (photos, stickers, voice, GIFs via bots), captions, forwards,
edits, replies to deleted messages (id gaps), deleted accounts (`"from": null`), links, text
links, code and pre blocks, mentions, e-mails and phone numbers, pasted logs far over any
length limit, and double-sent duplicates.

    python scripts/generate_sample_export.py                      # rewrite the shipped sample
    python scripts/generate_sample_export.py --messages 100000 --out /tmp/big.json
    python scripts/generate_sample_export.py --facts /tmp/k/facts.md --out /tmp/k/result.json

`--facts FILE` (issue 14, `benchmarks/knowledge.py`) also asks Борис about himself - where he works,
his city, his cat - and he answers with what FILE, the persona's knowledge file, says (FILE also
holds facts nobody asks about). Without it the output is the shipped sample, byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "examples" / "sample-export" / "result.json"
DEFAULT_MESSAGES = 5500
DEFAULT_SEED = 2024

CHAT_NAME = "DevOps Chat | k8s, CI/CD, SRE"
CHAT_ID = 1547283951
START = datetime(2024, 3, 4, 9, 12, tzinfo=timezone.utc)
NOT_INCLUDED = "(File not included. Change data exporting settings to download.)"


@dataclass(frozen=True)
class Person:
    name: str | None  # None: a deleted account
    from_id: str
    username: str


BORIS = Person("Борис Кубов", "user5172839406", "@boris_kubov")
ANNA = Person("Anna Smirnova", "user6034418822", "@anna_sre")
DIMA = Person("Дмитрий Новиков", "user7120045531", "@dima_nov")
IGOR = Person("Игорь | on-call", "user5901277364", "@igor_oncall")
SERGEY = Person("Сергей", "user4480219957", "@sergey_k")
KATE = Person("Kate Miller", "user6655083120", "@kate_observes")
ALEX = Person("Алексей Терехов", "user5238840176", "@alex_tf")
DELETED = Person(None, "user1000542870", "")
NEWCOMER_NAMES = [
    "Павел", "Olga K", "Никита Смирнов", "Tom", "Елена", "Артём", "Mark Evans", "Руслан",
    "Юля", "Денис В.", "Priya", "Максим", "Ирина", "Chris", "Глеб", "Вадим", "Li Wei",
    "Оксана", "Stepan", "Гоша", "Ana", "Роман", "Kirill", "Тимур", "Marta",
]
NEWCOMERS = [
    Person(name, f"user{6100000000 + 7919 * i * i + 104729 * i}", "")
    for i, name in enumerate(NEWCOMER_NAMES, start=1)
]

SERVICES = ["billing-api", "auth", "payments", "gateway", "search", "notifier", "orders", "frontend"]
NAMESPACES = ["prod", "staging", "dev", "monitoring"]
STATES = ["Pending", "CrashLoopBackOff", "ContainerCreating", "ImagePullBackOff", "OOMKilled"]


# Questions and the persona's answers, topic by topic. Each item: how people ask (RU, EN),
# how Борис answers (bodies; he adds his own opener and closer), a follow-up and his answer to it,
# and an optional command he quotes as code.
QA = [
    {
        "ru": ["почему под висит в {state}?", "под {svc} в {state}, что смотреть?"],
        "en": ["Why is my pod stuck in {state}?", "Pod of {svc} is in {state}, where do I look?"],
        "boris": ["сначала describe пода, там в events всё написано", "смотри events и лимиты, 90% проблем там"],
        "follow": ("а в events пусто", "значит смотри kubelet на ноде и хватает ли ресурсов на нодах"),
        "code": "kubectl describe pod -n {ns} {svc}-7d9c",
    },
    {
        "ru": ["как откатить деплой в k8s?", "выкатили {svc}, всё сломалось, как быстро откатить?"],
        "en": ["How do I roll back a deployment quickly?", "Bad release of {svc}, fastest rollback?"],
        "boris": ["rollout undo и потом уже разбираемся", "откатывай через helm rollback на прошлую ревизию"],
        "follow": ("а если helm history пустая?", "тогда rollout undo руками и срочно чинить пайплайн"),
        "code": "kubectl rollout undo deploy/{svc} -n {ns}",
    },
    {
        "ru": ["ingress отдаёт 502 после деплоя, куда копать?", "502 на {svc} через ingress, поды живые"],
        "en": ["Ingress returns 502 after deploy, any ideas?", "Getting 502 from ingress for {svc}, pods are up"],
        "boris": ["проверь readiness probe и порт в service, обычно там", "смотри endpoints у сервиса, если пусто — селектор кривой"],
        "follow": ("endpoints есть, а 502 всё равно", "тогда таймауты на ingress и keepalive у апстрима"),
        "code": "kubectl get endpoints -n {ns} {svc}",
    },
    {
        "ru": ["как правильно выставить requests и limits?", "какие limits ставить для {svc}?"],
        "en": ["How do you pick requests and limits?", "What limits would you set for {svc}?"],
        "boris": ["requests по реальному потреблению из графаны, limits по памяти обязательно, по cpu можно не ставить", "снимай метрики неделю, requests по p95, limit памяти чуть выше"],
        "follow": ("а cpu limit совсем не ставить?", "не ставить, иначе throttling съест латенси"),
        "code": "kubectl top pod -n {ns}",
    },
    {
        "ru": ["HPA не скейлит, метрики вроде есть", "почему hpa для {svc} не масштабируется?"],
        "en": ["HPA doesn't scale, metrics look fine", "Why won't the HPA for {svc} scale up?"],
        "boris": ["проверь metrics-server и что requests выставлены, без них hpa слепой", "hpa считает от requests, нет requests — нет скейлинга"],
        "follow": ("metrics-server живой", "тогда describe hpa, там будет причина в conditions"),
        "code": "kubectl describe hpa -n {ns} {svc}",
    },
    {
        "ru": ["нода в NotReady, поды не переезжают", "у нас нода отвалилась, что делать?"],
        "en": ["A node went NotReady and pods don't move", "Node is NotReady, what now?"],
        "boris": ["cordon, drain и смотреть kubelet с диском, обычно диск кончился", "сначала drain, потом journalctl kubelet, чаще всего диск или память"],
        "follow": ("drain висит", "значит PodDisruptionBudget не даёт, смотри pdb"),
        "code": "kubectl drain node-3 --ignore-daemonsets --delete-emptydir-data",
    },
    {
        "ru": ["как уменьшить docker образ?", "образ {svc} весит 2 гига, это нормально?"],
        "en": ["How do I make my docker image smaller?", "The {svc} image is 2GB, is that normal?"],
        "boris": ["multi-stage build и distroless в финале, вот и всё", "multi-stage, .dockerignore и не тащить компиляторы в рантайм"],
        "follow": ("а alpine норм?", "alpine норм, но с musl бывают сюрпризы, я за distroless"),
        "code": "docker build --target runtime -t {svc}:latest .",
    },
    {
        "ru": ["docker build каждый раз качает зависимости заново", "почему кэш докера не работает в CI?"],
        "en": ["docker build re-downloads dependencies every time", "Why doesn't docker layer cache work in CI?"],
        "boris": ["копируй сначала lock файл, ставь зависимости, потом код, порядок слоёв решает", "в CI нужен cache-from или buildx с кэшем в registry"],
        "follow": ("buildx с кэшем пробовал, медленно", "тогда кэш в registry с mode=max, станет быстрее"),
        "code": "docker buildx build --cache-from type=registry,ref=registry/{svc}:cache .",
    },
    {
        "ru": ["пайплайн в gitlab ci идёт 40 минут, как ускорить?", "CI стал очень медленный, с чего начать?"],
        "en": ["Our GitLab CI pipeline takes 40 minutes, how to speed it up?", "CI got very slow, where to start?"],
        "boris": ["кэш зависимостей, параллельные джобы и не гонять все тесты на каждый коммит", "смотри какие стейджи самые долгие и параллель их, кэш обязательно"],
        "follow": ("кэш уже есть", "тогда rules: changes, не собирай то, что не менялось"),
        "code": "rules: - changes: [services/{svc}/**]",
    },
    {
        "ru": ["как хранить секреты в CI?", "где держать токены для деплоя {svc}?"],
        "en": ["Where do you keep secrets for CI?", "How do you store deploy tokens for {svc}?"],
        "boris": ["в vault или хотя бы в masked variables, в репе никогда", "vault плюс короткоживущие токены, в гите секретов быть не должно"],
        "follow": ("а sops?", "sops тоже ок, если ключи в kms"),
        "code": "vault kv get secret/{svc}/deploy",
    },
    {
        "ru": ["terraform state залочен, что делать?", "terraform apply упал, теперь lock висит"],
        "en": ["Terraform state is locked, what do I do?", "terraform apply crashed and the lock is stuck"],
        "boris": ["убедись что никто не applyит и делай force-unlock", "force-unlock, но сначала проверь что никто не работает с этим стейтом"],
        "follow": ("а стейт не побился?", "сделай terraform plan, если план пустой — всё ок"),
        "code": "terraform force-unlock 6f1c2a",
    },
    {
        "ru": ["как организовать terraform для нескольких окружений?", "workspaces или отдельные папки для окружений?"],
        "en": ["How do you structure terraform for several environments?", "Workspaces or separate folders per environment?"],
        "boris": ["отдельные папки на окружение и общие модули, workspaces только для одинаковых окружений", "модули плюс папка на окружение, стейт у каждого свой"],
        "follow": ("а terragrunt?", "terragrunt норм если окружений много, для трёх не нужен"),
        "code": "terraform -chdir=envs/{ns} plan",
    },
    {
        "ru": ["terraform хочет пересоздать базу, почему?", "plan показывает destroy на rds, страшно"],
        "en": ["Terraform wants to recreate the database, why?", "Plan shows destroy on our RDS instance"],
        "boris": ["смотри какой атрибут forces replacement, и ставь prevent_destroy на базы", "читай план внимательно, там написано forces replacement, и lifecycle prevent_destroy на базу"],
        "follow": ("там engine_version поменялся", "тогда обновляй версию руками и делай import, не через пересоздание"),
        "code": "lifecycle {{ prevent_destroy = true }}",
    },
    {
        "ru": ["prometheus жрёт много памяти", "как понять что раздувает prometheus?"],
        "en": ["Prometheus uses a lot of memory", "How do I find what blows up Prometheus?"],
        "boris": ["кардинальность, ищи метрики с user_id в лейблах", "смотри top по series, почти всегда кто-то положил id в лейбл"],
        "follow": ("нашёл метрику с request_id в лейбле", "выпиливай лейбл и relabel drop, станет легче"),
        "code": "topk(10, count by (__name__)({{__name__=~\".+\"}}))",
    },
    {
        "ru": ["какие алерты ставить в первую очередь?", "с чего начать алертинг для {svc}?"],
        "en": ["Which alerts should we set up first?", "Where do I start with alerting for {svc}?"],
        "boris": ["алерты по симптомам: ошибки, латенси, насыщение, а не по cpu", "сначала SLO по ошибкам и латенси, остальное потом"],
        "follow": ("а на cpu совсем не алертить?", "на cpu дашборд, а алерт только если это бьёт по пользователям"),
        "code": "rate(http_requests_total{{status=~\"5..\"}}[5m])",
    },
    {
        "ru": ["графана тормозит на больших дашбордах", "дашборд грузится минуту, что делать?"],
        "en": ["Grafana is slow on big dashboards", "Our dashboard takes a minute to load"],
        "boris": ["recording rules для тяжёлых запросов и меньше панелей на дашборд", "recording rules и не строить графики за 30 дней по сырым данным"],
        "follow": ("recording rules это где?", "в prometheus rules, считаются заранее и запрос лёгкий"),
        "code": "record: job:http_requests:rate5m",
    },
    {
        "ru": ["логи куда собирать, loki или elk?", "что выбрать для логов в кубере?"],
        "en": ["Loki or ELK for logs?", "What do you use for logs in k8s?"],
        "boris": ["loki если логов немного и нужны только grep, elk если нужен полнотекст", "loki дешевле, elk мощнее, для начала бери loki"],
        "follow": ("а retention какой?", "две недели хватает, остальное в s3 если очень надо"),
        "code": "{{namespace=\"{ns}\", app=\"{svc}\"}} |= \"error\"",
    },
    {
        "ru": ["как сделать zero downtime деплой?", "при деплое {svc} падают запросы"],
        "en": ["How do I get zero-downtime deploys?", "Requests fail while {svc} is being deployed"],
        "boris": ["readiness probe, preStop sleep и graceful shutdown в приложении", "rolling update с maxUnavailable 0 и нормальный graceful shutdown"],
        "follow": ("preStop зачем?", "чтобы ingress успел убрать под из endpoints до SIGTERM"),
        "code": "lifecycle: preStop: exec: command: [\"sleep\", \"10\"]",
    },
    {
        "ru": ["argocd или flux?", "что выбрать для gitops?"],
        "en": ["ArgoCD or Flux?", "What would you pick for GitOps?"],
        "boris": ["argocd если нужна морда для разработчиков, flux если всё в гите и без ui", "argocd, разработчикам нужен ui, иначе будут ходить к тебе"],
        "follow": ("а app of apps нужен?", "нужен когда приложений больше десятка"),
        "code": "argocd app sync {svc}",
    },
    {
        "ru": ["сертификат протух на проде", "cert-manager не обновил сертификат, почему?"],
        "en": ["A certificate expired in production", "cert-manager didn't renew the certificate, why?"],
        "boris": ["смотри certificaterequest и challenge, обычно dns01 не проходит", "describe certificate и challenge, и алерт на срок сертификата поставь"],
        "follow": ("challenge висит в pending", "значит dns не обновился или у issuer нет прав в dns зоне"),
        "code": "kubectl describe certificate -n {ns} {svc}-tls",
    },
    {
        "ru": ["база тормозит после миграции", "postgres стал медленный, с чего начать?"],
        "en": ["The database got slow after a migration", "Postgres became slow, where to start?"],
        "boris": ["pg_stat_statements и explain analyze самых тяжёлых запросов", "смотри pg_stat_statements, скорее всего индекс потеряли"],
        "follow": ("индекс на месте", "тогда vacuum analyze, статистика могла устареть"),
        "code": "EXPLAIN ANALYZE SELECT * FROM orders WHERE user_id = 42;",
    },
]

OPENERS = ["ну смотри,", "ну смотри,", "ну смотри, тут всё просто:", "ну смотри, по классике:"]
CLOSERS = ["классика.", "работает — не трогай.", "проверено на проде.", "и не забудь про алерты 😉", "классика жанра."]
BORIS_QUIPS = [
    "классика жанра 😎", "пятница, деплой, прод — классика.", "работает — не трогай.",
    "ну смотри, это не баг, это фича. классика.", "ну смотри, кто деплоит в пятницу, тот и дежурит.",
    "у меня так же было, классика.", "ну смотри, сначала алерт, потом паника. классика.",
]
BORIS_THANKS = ["да не за что, пиши если что. классика.", "обращайся 😉", "ну смотри, главное что взлетело. работает — не трогай."]

THANKS_RU = ["спасибо, заработало!!!", "спасибо большое!", "о, помогло, спасибо", "спасибо, попробую"]
THANKS_EN = ["Thanks, that worked!", "Thank you so much 🙏", "Great, that fixed it. Thanks!", "Thanks, I'll try that."]
DIMA_ASK = ["ребят подскажите пожалуйста, {q}", "всем привет, {q}???", "подскажите, {q}", "а кто знает, {q}"]
ANNA_ASK = ["Hi everyone! Quick question: {q} Thanks in advance 🙏", "Hi all, {q}", "Hello! {q} Any advice is appreciated."]
SERGEY_LINES = ["+", "+1", "да", "ок", "rtfm", "плюсую", "не, не так", "так и есть", "тоже интересно"]
KATE_LINES = [
    "have you checked the dashboards? 📈", "just add an alert for that lol 🚨", "we had the same issue, the graphs showed it a day earlier 📉",
    "Boris is right, but also check your metrics first 😅", "this is why we need SLOs 😄", "grafana explore is your friend here 🔍",
]
ALEX_LINES = [
    "а у вас это в терраформе описано? если нет — вот и проблема", "всё что руками — то сломается, описывайте в коде",
    "terraform plan сначала, потом уже apply", "я бы вынес это в модуль", "IaC или не было",
]
ONCALL_OPEN = [
    "🔥🔥🔥 прод лежит, {svc} отдаёт 500", "кто опять трогал {svc}?? алерт за алертом", "3 часа ночи, алерт по {svc}, классический понедельник",
    "пейджер орёт, {svc} в {state}", "диск на ноде кончился, {svc} не стартует 🔥",
]
ONCALL_BORIS = [
    "ну смотри, сначала откатывай, потом разбираемся. классика.", "ну смотри, логи, события, последний деплой — по порядку. классика.",
    "ну смотри, кто деплоил последним? вот с него и начинай. работает — не трогай.", "ну смотри, rollout undo и спать, разбор утром. классика жанра.",
]
ONCALL_FIX = ["поднял, {svc} снова живой", "откатил, вроде отпустило", "нашёл, кончился диск под логи", "это был кривой configmap, поправил"]
ONCALL_END = ["ну смотри, пиши постмортем, иначе повторится. классика.", "ну смотри, алерт на это добавь, чтобы в следующий раз раньше узнать. классика."]
OFFTOPIC = [
    ("кто едет на DevOpsConf в этом году?", "ну смотри, я еду, если доклад примут. классика."),
    ("Anyone tried the new k8s release yet?", "ну смотри, на стейдже крутится, в прод через месяц. работает — не трогай."),
    ("какой кофе пьёте на дежурстве?", "ну смотри, на дежурстве любой кофе хороший. классика."),
    ("как вы ведёте документацию?", "ну смотри, README в каждой репе и runbook на каждый алерт. классика."),
    ("vim или vscode?", "ну смотри, на сервере vim, дома что хочешь. классика жанра."),
    ("Is it ok to deploy on Friday?", "ну смотри, кто деплоит в пятницу, тот и дежурит. классика."),
]
LINKS = [
    "https://kubernetes.io/docs/concepts/workloads/pods/pod-lifecycle/",
    "https://docs.docker.com/build/building/multi-stage/",
    "https://developer.hashicorp.com/terraform/cli/commands/force-unlock",
    "https://prometheus.io/docs/practices/naming/",
    "https://sre.google/sre-book/monitoring-distributed-systems/",
    "https://github.com/kubernetes/ingress-nginx/issues/4567",
]
LONG_LOG = (
    "вот что в логах:\n{ts} ERROR [{svc}] upstream connect error or disconnect/reset before headers. "
    "reset reason: connection failure, transport failure reason: delayed connect error: 111\n"
    "{ts} WARN  [{svc}] retrying request to http://{svc}.{ns}.svc.cluster.local:8080/healthz (attempt 3/5)\n"
    "{ts} ERROR [{svc}] readiness probe failed: Get \"http://10.42.3.17:8080/ready\": context deadline exceeded\n"
    "{ts} INFO  [kubelet] Back-off restarting failed container {svc} in pod {svc}-7d9c6b5f4-x2x9q_{ns}\n"
    "что это вообще значит?"
)
CONTACTS = [
    ("пишите на {email}, там ответим по вакансии", "devops-jobs@example.com"),
    ("мой рабочий {email}, скиньте конфиг туда", "a.smirnova@example.org"),
    ("если совсем горит — звоните дежурному {phone}", "+7 916 555-01-23"),
    ("дежурный телефон {phone}, но только если прод лежит", "+1 415 555 0199"),
]
FORWARDS = [
    ("Kubernetes News", "Kubernetes v1.30 released: structured authentication config is beta, sidecar containers GA."),
    ("Habr DevOps", "Как мы перевели 300 сервисов на ArgoCD и не сошли с ума"),
    ("SRE Weekly", "Incident of the week: a single misconfigured DNS TTL took down checkout for 40 minutes."),
]
STICKERS = ["😂", "🔥", "👍", "🤡", "😭", "🫡", "💀"]


class ChatWriter:
    """Builds the message list: ids, timestamps, replies and the export's field shapes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.messages: list[dict] = []
        self.next_id = 1
        self.now = START
        self.recent_text_ids: list[int] = []

    def tick(self, low: float = 0.3, high: float = 12.0) -> None:
        self.now += timedelta(minutes=self.rng.uniform(low, high), seconds=self.rng.randint(0, 59))

    def _base(self, kind: str) -> dict:
        message = {
            "id": self.next_id,
            "type": kind,
            "date": self.now.strftime("%Y-%m-%dT%H:%M:%S"),
            "date_unixtime": str(int(self.now.timestamp())),
        }
        self.next_id += 1
        return message

    def service(self, actor: Person, action: str, **extra: object) -> dict:
        message = self._base("service")
        message.update({"actor": actor.name, "actor_id": actor.from_id, "action": action, **extra})
        message.update({"text": "", "text_entities": []})
        self.messages.append(message)
        return message

    def say(
        self,
        who: Person,
        text: str | list,
        reply_to: int | None = None,
        *,
        media: dict | None = None,
        forwarded_from: str | None = None,
        via_bot: str | None = None,
    ) -> int:
        self.tick()
        message = self._base("message")
        if self.rng.random() < 0.04 and text:
            edited = self.now + timedelta(seconds=self.rng.randint(20, 600))
            message["edited"] = edited.strftime("%Y-%m-%dT%H:%M:%S")
            message["edited_unixtime"] = str(int(edited.timestamp()))
        message["from"] = who.name
        message["from_id"] = who.from_id
        if forwarded_from:
            message["forwarded_from"] = forwarded_from
        if reply_to is not None:
            message["reply_to_message_id"] = reply_to
        if via_bot:
            message["via_bot"] = via_bot
        message.update(media or {})
        message["text"] = text
        message["text_entities"] = entities_of(text)
        self.messages.append(message)
        if text:
            self.recent_text_ids = (self.recent_text_ids + [message["id"]])[-30:]
        return message["id"]


def entities_of(text: str | list) -> list[dict]:
    """`text_entities` mirrors `text` with plain strings wrapped as {"type": "plain"}."""
    if isinstance(text, str):
        return [{"type": "plain", "text": text}] if text else []
    return [{"type": "plain", "text": part} if isinstance(part, str) else dict(part) for part in text]


def photo() -> dict:
    return {"photo": NOT_INCLUDED, "photo_file_size": 183406, "width": 1280, "height": 720}


def sticker(emoji: str) -> dict:
    return {
        "file": NOT_INCLUDED, "file_size": 24118, "thumbnail": NOT_INCLUDED, "thumbnail_file_size": 6120,
        "media_type": "sticker", "sticker_emoji": emoji, "width": 512, "height": 512,
    }


# Борис's facts for `--facts`: how people ask, the fact as his knowledge file states it, how he says it.
PERSONAL = [
    (["Борис, а ты где работаешь?", "ты сейчас где работаешь?"], "Работаю SRE в компании Облачные Системы", "работаю SRE в Облачных Системах"),
    (["а ты в каком городе живёшь?", "ты из какого города?"], "Живу в городе Казань", "живу в Казани, город огонь"),
    (["как зовут твоего кота?", "у тебя же кот есть, как зовут?"], "Моего кота зовут Бублик", "кота зовут Бублик"),
    (["какая у тебя машина?", "у тебя есть машина?"], "Моя машина — старая Skoda Octavia", "у меня старая Skoda Octavia, ездит и ладно"),
    (["какой редактор любишь?", "в каком редакторе пишешь?"], "Мой редактор — Neovim с LazyVim", "только Neovim с LazyVim"),
    (["какой дистрибутив у тебя дома?", "на каком дистрибутиве сидишь?"], "Дома стоит дистрибутив Arch Linux", "дома Arch Linux, btw"),
    (["откуда ты родом?", "ты сам родом откуда?"], "Родом из Перми", "родом из Перми"),
    (["сколько лет ты в девопсе?", "давно в девопсе?"], "В девопсе уже 9 лет, до этого был сисадмином", "9 лет уже, до этого сисадминил"),
    (["какой спорт любишь?", "спортом занимаешься?"], "Из спорта — скалолазание по выходным", "скалолазание по выходным"),
    (["ты где учился?", "где учился, на кого?"], "Учился в Казанском университете на физфаке", "учился на физфаке в КФУ"),
    (["какая у тебя клавиатура?", "на какой клавиатуре печатаешь?"], "Клавиатура — сплит Ergodox", "сплит Ergodox, спина спасибо говорит"),
    (["какой язык программирования любишь?", "на каком языке пишешь?"], "Любимый язык программирования — Go", "Go, без вариантов"),
    (["какую музыку слушаешь?", "что слушаешь из музыки?"], "Слушаю музыку: в основном Би-2 и Кино", "Би-2 и Кино"),
    (["какой у тебя ноутбук?", "на каком ноутбуке работаешь?"], "Ноутбук — ThinkPad X1 Carbon", "ThinkPad X1 Carbon"),
    (["ты женат?", "жена есть?"], "Женат, жену зовут Алина", "женат, жена Алина"),
    (["какой сериал смотришь?", "что за сериал сейчас смотришь?"], "Сейчас смотрю сериал «Мистер Робот»", "«Мистер Робот» пересматриваю"),
]
UNASKED_FACTS = [
    "Дежурю по средам и субботам", "Пью кофе без сахара", "Любимая книга — «Site Reliability Engineering»",
    "Боюсь высоты только в самолётах", "Собираю механические часы", "Никогда не был в Сочи",
    "Умею играть на гитаре", "Пишу доклады для DevOpsConf", "Сплю по 6 часов", "Не ем грибы",
]


def facts_markdown() -> str:
    """The persona's knowledge file for `--facts`: every fact he states, and some nobody asks about."""
    return "# Борис Кубов\n\n" + "".join(f"- {fact}\n" for _, fact, _ in PERSONAL) + \
        "".join(f"- {fact}\n" for fact in UNASKED_FACTS)


class Conversations:
    """Session generators: each writes one conversation into the chat."""

    def __init__(self, rng: random.Random, chat: ChatWriter) -> None:
        self.rng = rng
        self.chat = chat
        self.members = [BORIS, ANNA, DIMA, IGOR, SERGEY, KATE, ALEX, DELETED]
        self.joined = 0

    def slots(self) -> dict[str, str]:
        return {"svc": self.rng.choice(SERVICES), "ns": self.rng.choice(NAMESPACES), "state": self.rng.choice(STATES)}

    def boris_answer(self, body: str) -> str:
        return f"{self.rng.choice(OPENERS)} {body}. {self.rng.choice(CLOSERS)}"

    def question(self) -> None:
        rng, chat = self.rng, self.chat
        item = rng.choice(QA)
        slots = self.slots()
        newcomers = self.newcomers()
        asker = rng.choice(newcomers if newcomers and rng.random() < 0.3 else [DIMA, ANNA, KATE, ALEX, IGOR])
        english = asker in (ANNA, KATE) or (asker in newcomers and asker.name.isascii())
        q = rng.choice(item["en" if english else "ru"]).format(**slots)
        if asker is DIMA:
            q = rng.choice(DIMA_ASK).format(q=q[0].lower() + q[1:])
        elif asker is ANNA:
            q = rng.choice(ANNA_ASK).format(q=q)
        if rng.random() < 0.06:
            q_id = chat.say(asker, LONG_LOG.format(ts=chat.now.strftime("%H:%M:%S"), **slots))
        elif rng.random() < 0.07:
            q_id = chat.say(asker, q, media=photo())
        else:
            q_id = chat.say(asker, q)
        if rng.random() < 0.03:
            chat.say(asker, q)  # double-sent: a duplicate the data step must not count twice
        if rng.random() < 0.35:
            self.chatter(q_id)
        if rng.random() < 0.88:
            self.boris_reply(item, slots, q_id)
        elif rng.random() < 0.5:
            chat.say(SERGEY, "rtfm", q_id)
        if rng.random() < 0.3:
            chat.say(rng.choice([KATE, ALEX]), rng.choice(KATE_LINES + ALEX_LINES), q_id)
        if rng.random() < 0.55:
            follow_q, follow_a = item["follow"]
            follow_q = "Tried that, still the same. What next?" if english else follow_q
            f_id = chat.say(asker, follow_q, rng.choice([None, chat.recent_text_ids[-1]]))
            if rng.random() < 0.85:
                chat.say(BORIS, self.boris_answer(follow_a), f_id)
        if rng.random() < 0.6:
            t_id = chat.say(asker, rng.choice(THANKS_EN if english else THANKS_RU), chat.recent_text_ids[-1])
            if rng.random() < 0.35:
                chat.say(BORIS, rng.choice(BORIS_THANKS), t_id)
        if rng.random() < 0.15:
            chat.say(rng.choice(self.members[:7]), "", media=sticker(rng.choice(STICKERS)))

    def boris_reply(self, item: dict, slots: dict[str, str], q_id: int) -> None:
        rng, chat = self.rng, self.chat
        answer = self.boris_answer(rng.choice(item["boris"]))
        roll = rng.random()
        if roll < 0.25:
            head, tail = answer.split(". ", 1)
            text: str | list = [f"{head}:\n", {"type": "code", "text": item["code"].format(**slots)}, f"\n{tail}"]
        elif roll < 0.32:
            text = [f"{answer} подробнее тут: ", {"type": "link", "text": rng.choice(LINKS)}]
        elif roll < 0.37:
            text = [f"{answer.rstrip('.')} — см. ", {"type": "text_link", "text": "доку", "href": rng.choice(LINKS)}]
        else:
            text = answer
        chat.say(BORIS, text, q_id)

    def chatter(self, q_id: int) -> None:
        rng, chat = self.rng, self.chat
        roll = rng.random()
        if roll < 0.4:
            chat.say(SERGEY, rng.choice(SERGEY_LINES), rng.choice([None, q_id]))
        elif roll < 0.6:
            chat.say(rng.choice([SERGEY, DIMA]), [{"type": "mention", "text": BORIS.username}, " глянь плз"], q_id)
        elif roll < 0.75:
            chat.say(DELETED, rng.choice(["у нас так же", "+", "а версия кубера какая?"]), q_id)
        elif roll < 0.9:
            chat.say(KATE, rng.choice(KATE_LINES), q_id)
        else:
            chat.say(rng.choice([KATE, DIMA]), "", media={"media_type": "animation", "file": NOT_INCLUDED, "mime_type": "video/mp4", "width": 320, "height": 240}, via_bot="@gif")

    def personal(self) -> None:
        """Someone asks Борис about himself; he answers with a fact of his knowledge file."""
        rng, chat = self.rng, self.chat
        asks, _, say = rng.choice(PERSONAL)
        q_id = chat.say(rng.choice([DIMA, ALEX, IGOR, SERGEY]), rng.choice(asks))
        chat.say(BORIS, self.boris_answer(say), q_id)

    def oncall(self) -> None:
        rng, chat = self.rng, self.chat
        slots = self.slots()
        if rng.random() < 0.5:  # the pager does not care what time it is
            night = chat.now + timedelta(days=1)
            chat.now = night.replace(hour=rng.choice([1, 2, 3, 4]), minute=rng.randint(0, 59))
        o_id = chat.say(IGOR, rng.choice(ONCALL_OPEN).format(**slots))
        if rng.random() < 0.4:
            chat.say(KATE, "dashboard is all red 📉", o_id)
        if rng.random() < 0.3:
            chat.say(IGOR, "", media={"media_type": "voice_message", "file": NOT_INCLUDED, "mime_type": "audio/ogg", "duration_seconds": rng.randint(3, 40)})
        b_id = chat.say(BORIS, rng.choice(ONCALL_BORIS), o_id)
        f_id = chat.say(IGOR, rng.choice(ONCALL_FIX).format(**slots), b_id)
        if rng.random() < 0.7:
            chat.say(BORIS, rng.choice(ONCALL_END), f_id)
        if rng.random() < 0.3:
            chat.say(SERGEY, rng.choice(SERGEY_LINES))

    def offtopic(self) -> None:
        rng, chat = self.rng, self.chat
        q, a = rng.choice(OFFTOPIC)
        q_id = chat.say(rng.choice([ANNA, DIMA, KATE, ALEX, IGOR]), q)
        if rng.random() < 0.5:
            chat.say(SERGEY, rng.choice(SERGEY_LINES), q_id)
        chat.say(BORIS, a, q_id)
        if rng.random() < 0.5:
            chat.say(BORIS, rng.choice(BORIS_QUIPS))
        if rng.random() < 0.4:
            chat.say(rng.choice(self.members[:7]), "", media=sticker(rng.choice(STICKERS)))

    def untidy(self) -> None:
        """The shapes a data step must survive: forwards, links, contacts, pins, photos, joins."""
        rng, chat = self.rng, self.chat
        roll = rng.random()
        if roll < 0.2:
            source, text = rng.choice(FORWARDS)
            f_id = chat.say(rng.choice([ALEX, KATE, IGOR]), text, forwarded_from=source)
            chat.say(BORIS, rng.choice(BORIS_QUIPS), f_id)
        elif roll < 0.35:
            chat.say(rng.choice([KATE, ALEX, ANNA]), [{"type": "link", "text": rng.choice(LINKS)}])
        elif roll < 0.5:
            template, value = rng.choice(CONTACTS)
            kind = "email" if "{email}" in template else "phone"
            before, after = template.split("{" + kind + "}")
            chat.say(rng.choice([ANNA, IGOR, ALEX]), [before, {"type": kind, "text": value}, after])
        elif roll < 0.6 and chat.recent_text_ids:
            chat.tick()
            chat.service(BORIS, "pin_message", message_id=rng.choice(chat.recent_text_ids))
        elif roll < 0.72:
            who = rng.choice([DIMA, IGOR, KATE])
            chat.say(who, rng.choice(["", "", "вот так это выглядит"]), media=photo())
        elif roll < 0.8:
            chat.say(rng.choice([BORIS, ANNA]), [{"type": "mention_name", "text": "Дмитрий", "user_id": 7120045531}, ", глянь закреп"])
        elif roll < 0.9:
            who = rng.choice([DIMA, ALEX])
            chat.say(who, ["кстати ", {"type": "hashtag", "text": "#helm"}, " ", {"type": "bold", "text": "4"}, " вышел, кто обновился?"])
        else:
            chat.say(IGOR, ["docker-compose.yml:\n", {"type": "pre", "text": "services:\n  api:\n    image: api:latest\n    restart: always", "language": "yaml"}])

    def newcomers(self) -> list[Person]:
        return NEWCOMERS[: self.joined]

    def join(self) -> None:
        rng, chat = self.rng, self.chat
        if self.joined == len(NEWCOMERS):
            return
        person = NEWCOMERS[self.joined]
        self.joined += 1
        chat.tick()
        if rng.random() < 0.7:
            chat.service(person, "join_group_by_link", inviter="Group")
        else:
            chat.service(ALEX, "invite_members", members=[person.name])
        if rng.random() < 0.5:
            chat.say(SERGEY, rng.choice(["привет, правила в закрепе", "welcome!"]))


def next_session_start(rng: random.Random, now: datetime) -> datetime:
    """Sessions happen in the daytime, hours apart (so conversations have clear edges)."""
    start = now + timedelta(hours=rng.uniform(3.2, 9.0))
    if start.hour >= 22 or start.hour < 8:
        start = (start + timedelta(hours=12)).replace(hour=rng.randint(8, 11), minute=rng.randint(0, 59))
    return start


def generate(messages: int = DEFAULT_MESSAGES, seed: int = DEFAULT_SEED, personal: bool = False) -> dict:
    """The export as a dict, at least `messages` ids long (a few ids are gaps: deleted messages);
    `personal`: Борис is also asked about himself (the `--facts` variant)."""
    rng = random.Random(seed)
    chat = ChatWriter(rng)
    talk = Conversations(rng, chat)
    chat.service(ALEX, "create_group", title=CHAT_NAME, members=[ALEX.name, BORIS.name])
    chat.service(ALEX, "invite_members", members=[m.name for m in talk.members[1:6]])
    kinds = [talk.question, talk.oncall, talk.offtopic, talk.untidy, talk.join]
    weights = [62, 9, 10, 16, 3]
    if personal:
        kinds, weights = [*kinds, talk.personal], [*weights, 12]
    while chat.next_id <= messages:
        for _ in range(rng.randint(1, 3)):
            rng.choices(kinds, weights)[0]()
        chat.now = next_session_start(rng, chat.now)
        if rng.random() < 0.004:
            chat.service(ALEX, "edit_group_title", title=CHAT_NAME)
    # Deleted messages leave id gaps; replies to them keep pointing at the missing ids.
    kept = [m for m in chat.messages if m["type"] == "service" or rng.random() >= 0.02]
    return {"name": CHAT_NAME, "type": "public_supergroup", "id": CHAT_ID, "messages": kept}


def render(export: dict) -> str:
    """Telegram Desktop's formatting: one-space indent, UTF-8, trailing newline."""
    return json.dumps(export, ensure_ascii=False, indent=1) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write result.json")
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help="size of the export")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="same seed, same bytes")
    parser.add_argument("--facts", type=Path, help="also write the persona's knowledge file here, and ask him about it")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(generate(args.messages, args.seed, personal=args.facts is not None)), encoding="utf-8")
    print(f"wrote {args.out}")
    if args.facts:
        args.facts.parent.mkdir(parents=True, exist_ok=True)
        args.facts.write_text(facts_markdown(), encoding="utf-8")
        print(f"wrote {args.facts}")


if __name__ == "__main__":
    main()
