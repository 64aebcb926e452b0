#!/usr/bin/env python3
"""Generate the labelled PII corpus: filters/pii-redaction/tests/corpus.jsonl.

One JSON object a line: {"text": ..., "spans": [{"start", "end", "entity"}]} with byte
offsets into the UTF-8 text. Labelled spans are true PII made by Faker in several locales
(and secrets made to each issuer's documented format); the same texts carry unlabelled
near-misses: Luhn-invalid card numbers, SSNs in invalid ranges, IBANs with a wrong check,
version strings, order ids, timestamps, plain long numbers, invalid IPs, look-alike
secrets. The corpus is committed; regenerate it (deterministic, seeded) with

    .venv/bin/pip install faker==40.54.0 && .venv/bin/python scripts/gen-pii-corpus.py

Phone numbers: Faker also prints some national numbers as bare digit runs
(`00008063608`). Those are indistinguishable from plain long numbers, which the
detector deliberately does not report, so they are left out of the phone labels.
"""

import base64
import json
import os
import random
import string
import sys

from faker import Faker

SEED = 20261121
rng = random.Random(SEED)
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "ja_JP", "pt_BR", "it_IT"]
fakers = {loc: Faker(loc) for loc in LOCALES}
for i, f in enumerate(fakers.values()):
    f.seed_instance(SEED + i)


def fk(locales=LOCALES):
    return fakers[rng.choice(locales)]


def rand(alphabet, n):
    return "".join(rng.choice(alphabet) for _ in range(n))


ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


def luhn_ok(digits):
    total = 0
    for i, d in enumerate(reversed(digits)):
        v = int(d)
        if i % 2 == 1:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return total % 10 == 0


def group(digits, sizes, sep):
    out, i = [], 0
    for s in sizes:
        out.append(digits[i : i + s])
        i += s
    if i < len(digits):
        out.append(digits[i:])
    return sep.join(x for x in out if x)


# ----- true PII -----

def email():
    f = fk()
    return rng.choice([f.email, f.free_email, f.company_email, f.ascii_safe_email])()


def phone():
    f = fk(["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "ja_JP", "pt_BR"])
    for _ in range(50):
        p = f.phone_number()
        if any(c in p for c in " -.()+"):
            return p
    return "+1-415-555-2671"


def ssn():
    s = fakers["en_US"].ssn()
    return s if rng.random() < 0.8 else s.replace("-", " ")


def card():
    f = fakers["en_US"]
    number = f.credit_card_number()
    while len(number) < 13:  # 12-digit Maestro numbers: the range is 13-19
        number = f.credit_card_number()
    r = rng.random()
    if len(number) == 16 and r < 0.3:
        return group(number, [4, 4, 4, 4], " ")
    if len(number) == 16 and r < 0.5:
        return group(number, [4, 4, 4, 4], "-")
    if len(number) == 15 and r < 0.4:
        return group(number, [4, 6, 5], " ")
    return number


def iban():
    f = fk(["en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "it_IT", "pt_BR"])
    value = f.iban()
    if rng.random() < 0.4:
        value = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
    return value


def ipv4():
    f = fk()
    return rng.choice([f.ipv4, f.ipv4_private, f.ipv4_public])()


def ipv6():
    return fk().ipv6()


def aws():
    return rng.choice(["AKIA", "ASIA"]) + rand(string.ascii_uppercase + string.digits, 16)


def github():
    if rng.random() < 0.25:
        return "github_pat_" + rand(ALNUM, 22) + "_" + rand(ALNUM, 59)
    return "gh" + rng.choice("pousr") + "_" + rand(ALNUM, 36)


def openai_key():
    r = rng.random()
    if r < 0.4:
        return "sk-" + rand(ALNUM, 20) + "T3BlbkFJ" + rand(ALNUM, 20)
    if r < 0.8:
        return "sk-proj-" + rand(B64URL, 74) + "T3BlbkFJ" + rand(B64URL, 74)
    return "sk-svcacct-" + rand(B64URL, 60) + "T3BlbkFJ" + rand(B64URL, 60)


def anthropic_key():
    return "sk-ant-api03-" + rand(B64URL, 93) + "AA"


def google_key():
    return "AIza" + rand(B64URL, 35)


def slack():
    kind = rng.choice("bpa")
    return f"xox{kind}-{rand(string.digits, 12)}-{rand(string.digits, 13)}-{rand(ALNUM, 24)}"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt():
    header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    f = fk()
    payload = {"sub": str(rng.randint(1, 10**9)), "name": f.name(), "iat": rng.randint(1.6e9, 1.8e9)}
    sig = os.urandom(0) or bytes(rng.getrandbits(8) for _ in range(rng.choice([32, 64])))
    return ".".join([b64url(json.dumps(header).encode()), b64url(json.dumps(payload).encode()), b64url(sig)])


def private_key():
    label = rng.choice(["RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY"])
    body = bytes(rng.getrandbits(8) for _ in range(rng.choice([120, 300, 600])))
    b64 = base64.b64encode(body).decode()
    lines = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----"


TRUE = {
    "email": email,
    "phone": phone,
    "ssn": ssn,
    "credit_card": card,
    "iban": iban,
    "ipv4": ipv4,
    "ipv6": ipv6,
    "aws_access_key": aws,
    "github_token": github,
    "openai_key": openai_key,
    "anthropic_key": anthropic_key,
    "google_api_key": google_key,
    "slack_token": slack,
    "jwt": jwt,
    "private_key": private_key,
}

# ----- near-misses (never labelled) -----

def bad_card():
    while True:
        number = fakers["en_US"].credit_card_number()
        if len(number) < 13:
            continue
        digits = list(number)
        i = rng.randrange(len(digits))
        digits[i] = str((int(digits[i]) + rng.randint(1, 9)) % 10)
        number = "".join(digits)
        if not luhn_ok(number):
            return group(number, [4, 4, 4, 4], " ") if len(number) == 16 and rng.random() < 0.4 else number


def bad_ssn():
    area = rng.choice(["000", "666", str(rng.randint(900, 999)), f"{rng.randint(1, 665):03d}"])
    grp = "00" if area not in ("000", "666") and not area.startswith("9") and rng.random() < 0.5 else f"{rng.randint(1, 99):02d}"
    serial = "0000" if area not in ("000", "666") and not area.startswith("9") and grp != "00" else f"{rng.randint(1, 9999):04d}"
    return f"{area}-{grp}-{serial}"


def bad_iban():
    value = fk(["en_GB", "de_DE", "fr_FR", "es_ES", "nl_NL", "it_IT"]).iban()
    check = int(value[2:4])
    wrong = f"{(check + rng.randint(1, 96)) % 97:02d}"
    return value[:2] + wrong + value[4:]


def version():
    a, b, c = rng.randint(0, 20), rng.randint(0, 40), rng.randint(0, 200)
    return rng.choice([
        f"v{a}.{b}.{c}", f"version {a}.{b}.{c}", f"{a}.{b}.{c}-beta.{rng.randint(1, 9)}",
        f"{a}.{b}", f"release {a}.{b}.{c}.{rng.randint(0, 9)}", f"10.0.{rng.randint(10000, 22000)}.{rng.randint(100, 3000)}",
        f"python{a % 4 + 2}.{b % 13}", f"node v{a}.{b}.{c}",
    ])


def order_id():
    return rng.choice([
        f"ORD-{rng.randint(2019, 2026)}-{rng.randint(0, 999999):06d}",
        f"INV-{rng.randint(10000, 99999)}",
        f"#A-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}",
        f"order {rng.randint(100000, 999999)}-{rng.randint(10, 99)}",
        f"SKU {rand(string.ascii_uppercase, 3)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        f"ticket JIRA-{rng.randint(100, 99999)}",
    ])


def timestamp():
    f = fk()
    dt = f.date_time_between(start_date="-5y", end_date="+1y")
    return rng.choice([
        dt.strftime("%Y-%m-%d %H:%M:%S"), dt.strftime("%Y-%m-%dT%H:%M:%SZ"), dt.strftime("%d.%m.%Y"),
        dt.strftime("%m/%d/%Y"), dt.strftime("%H:%M:%S"), dt.strftime("%Y-%m-%d"), dt.strftime("%d/%m/%Y %H:%M"),
    ])


def long_number():
    while True:
        n = rng.choice([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 24])
        digits = str(rng.randint(1, 9)) + rand(string.digits, n - 1)
        if 13 <= n <= 19 and luhn_ok(digits):
            continue  # a Luhn-valid 13-19 digit number is card-shaped, not a near-miss
        return rng.choice([digits, f"{int(digits):,}" if n < 16 else digits, f"${rng.randint(1, 99999)}.{rng.randint(0, 99):02d}"])


def bad_ip():
    return rng.choice([
        f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
        f"{rng.randint(1, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}",
        f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}.{rng.randint(0, 9)}",
        ":".join(f"{rng.randint(0, 255):02X}" for _ in range(6)),  # MAC address
        "std::vector<int>", "a[1::2]", "Foo::Bar::baz()",
    ])


def bad_email():
    f = fk()
    return rng.choice([
        f"{f.user_name()}@localhost", f"@{f.user_name()}", f"{f.user_name()}@", f"user at {f.domain_name()}",
        f"{f.user_name()}@{f.domain_word()}", "name@domain.c",
    ])


def bad_secret():
    return rng.choice([
        "AKIA" + rand(string.ascii_uppercase, 8), "sk-learn", "sk-" + "-".join(fk().words(4)),
        "ghp_" + rand(ALNUM, 12), "eyJ" + rand(ALNUM, 30), "xoxb-not-a-token",
        "-----BEGIN CERTIFICATE-----\nMIIB" + rand(ALNUM, 60) + "\n-----END CERTIFICATE-----",
        "-----BEGIN PUBLIC KEY-----\nMIIB" + rand(ALNUM, 60) + "\n-----END PUBLIC KEY-----",
        "AIza" + rand(ALNUM, 12), "ghp_is_a_prefix", "github_pat_short",
        b64url(os.urandom(0) or bytes(rng.getrandbits(8) for _ in range(30))),
        "SHA256:" + rand(ALNUM, 43), rand(string.hexdigits.lower(), 40),
    ])


def bad_phone():
    return rng.choice([
        f"{rng.randint(1, 99)} {rng.randint(100, 999)}",
        f"{rng.randint(2015, 2026)} {rng.randint(2015, 2026)} {rng.randint(2015, 2026)}",
        f"ISBN 978-{rng.randint(0, 9)}-{rng.randint(10, 99)}-{rng.randint(100000, 999999)}-{rng.randint(0, 9)}",
        f"zip {rng.randint(10000, 99999)}", f"{rng.randint(1, 999)}%",
        f"{rng.randint(10, 99)}-{rng.randint(10, 99)}",
    ])


NEAR = [bad_card, bad_ssn, bad_iban, version, order_id, timestamp, long_number, bad_ip, bad_email, bad_secret, bad_phone]

TEMPLATES = [
    "Please contact {} about the invoice.",
    "My details: {}.",
    "{} is what the form says",
    "Can you check {} for me?",
    "Use {} (from the ticket) and reply.",
    "Logged value: {}\n",
    "« {} » — merci",
    "Der Wert ist {}, danke.",
    "送信先: {} です",
    "value={};",
]


def sentence():
    f = fk()
    return rng.choice([f.sentence, f.catch_phrase, f.bs, lambda: f.paragraph(nb_sentences=2), f.address])()


def record():
    parts, spans = [], []
    pieces = rng.randint(1, 4)
    for _ in range(pieces):
        parts.append(sentence() + " ")
        if rng.random() < 0.55:
            entity = rng.choice(list(TRUE))
            value = TRUE[entity]()
            label = True
        else:
            value = rng.choice(NEAR)()
            label = False
        tpl = rng.choice(TEMPLATES)
        before, after = tpl.split("{}")
        prefix = "".join(parts) + before
        if label:
            start = len(prefix.encode())
            spans.append({"start": start, "end": start + len(value.encode()), "entity": entity})
        parts.append(before + value + after + " ")
    text = "".join(parts).strip()
    return {"text": text, "spans": spans}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "filters/pii-redaction/tests/corpus.jsonl"
    records = [record() for _ in range(2500)]
    with open(out, "w", encoding="utf-8") as fh:
        for r in records:
            for s in r["spans"]:
                assert r["text"].encode()[s["start"] : s["end"]].decode()
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = {}
    for r in records:
        for s in r["spans"]:
            counts[s["entity"]] = counts.get(s["entity"], 0) + 1
    print(f"{out}: {len(records)} records, {sum(counts.values())} labelled spans: {counts}")


if __name__ == "__main__":
    main()
