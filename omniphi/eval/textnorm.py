"""English text normalisation for WER, after Whisper's ``EnglishTextNormalizer``.

Whisper's paper scores WER only after normalising both sides, because a transcript that writes
"Mr. Smith paid $21" for the reference "MISTER SMITH PAID TWENTY ONE DOLLARS" has made no
recognition error. This is our own implementation of the rules that matter for that, in the
same order as Whisper's:

1. lower case;
2. remove text in [brackets], <angle brackets> and (parentheses) — annotations such as
   "[noise]" — and the fillers hmm, mm, mhm, mmm, uh, um;
3. standardise contractions and abbreviations: won't → will not, can't → can not, let's →
   let us, gonna/wanna/gotta → going to/want to/got to, titles (mr → mister, mrs → missus,
   dr → doctor, st → saint, jr → junior, ...), "'s been" → "has been", and then the generic
   suffixes n't → not, 're → are, 's → is, 'd → would, 'll → will, 've → have, 'm → am
   (like Whisper, a possessive 's also becomes "is": both sides get the same treatment);
4. drop commas inside numbers and periods not followed by a digit; strip diacritics (é → e,
   æ → ae, ß → ss) and replace every other symbol/punctuation character by a space, keeping
   . % $ ¢ € £ for the number step;
5. numbers: spelled-out cardinals become digits ("twenty one" → 21, "one hundred and five" →
   105, "two thousand twenty" → 2020, "nineteen ninety nine" → 1999, "three point one four" →
   3.14, "2 million" → 2000000), ordinals become 1st/2nd/3rd/21st, "N percent" → N%,
   "N dollars/cents/pounds/euros" → $N/¢N/£N/€N;
6. British → American spellings from a list of common word families (colour, centre, realise,
   travelled, grey, programme, ...), not Whisper's full 1,700-word table;
7. drop currency/percent signs that no number uses, collapse whitespace.

Not implemented (rare in read speech): Whisper's handling of "and a half", "double/triple"
digit sequences, "oh" as zero, number ranges and its complete spelling table.
"""

from __future__ import annotations

import re
import unicodedata

# --------------------------------------------------------------------------- step 3

_STANDARDISE = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\blet's\b", "let us"),
    (r"\bain't\b", "aint"), (r"\by'all\b", "you all"), (r"\bwanna\b", "want to"),
    (r"\bgotta\b", "got to"), (r"\bgonna\b", "going to"), (r"\bi'ma\b", "i am going to"),
    (r"\bimma\b", "i am going to"), (r"\bwoulda\b", "would have"), (r"\bcoulda\b", "could have"),
    (r"\bshoulda\b", "should have"), (r"\bma'am\b", "madam"),
    # titles and abbreviations (the trailing period goes away in step 4)
    (r"\bmr\b", "mister "), (r"\bmrs\b", "missus "), (r"\bst\b", "saint "), (r"\bdr\b", "doctor "),
    (r"\bprof\b", "professor "), (r"\bcapt\b", "captain "), (r"\bgov\b", "governor "),
    (r"\bald\b", "alderman "), (r"\bgen\b", "general "), (r"\bsen\b", "senator "),
    (r"\brep\b", "representative "), (r"\bpres\b", "president "), (r"\brev\b", "reverend "),
    (r"\bhon\b", "honorable "), (r"\basst\b", "assistant "), (r"\bassoc\b", "associate "),
    (r"\blt\b", "lieutenant "), (r"\bcol\b", "colonel "), (r"\bjr\b", "junior "),
    (r"\bsr\b", "senior "), (r"\besq\b", "esquire "),
    # perfect tenses, before the generic 's → is
    (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'d gone\b", " had gone"),
    (r"'s gone\b", " has gone"), (r"'d done\b", " had done"), (r"'s got\b", " has got"),
    # generic contractions
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"),
    (r"'ll\b", " will"), (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am"),
]
_STANDARDISE = [(re.compile(p), r) for p, r in _STANDARDISE]

# --------------------------------------------------------------------------- step 4

_KEEP = set(".%$¢€£")
_SPECIAL_LETTERS = {"œ": "oe", "ø": "o", "æ": "ae", "ß": "ss", "đ": "d", "ð": "d", "þ": "th", "ł": "l", "ı": "i"}


def _remove_symbols_and_diacritics(text: str) -> str:
    out = []
    for char in unicodedata.normalize("NFKD", text):
        if char in _KEEP:
            out.append(char)
        elif char in _SPECIAL_LETTERS:
            out.append(_SPECIAL_LETTERS[char])
        elif unicodedata.category(char) == "Mn":  # a combining accent: é = e + ´
            continue
        elif unicodedata.category(char)[0] in "MSP":  # other marks, symbols, punctuation
            out.append(" ")
        else:
            out.append(char)
    return "".join(out)


# --------------------------------------------------------------------------- step 5

_ONES = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
_TEENS = {w: 10 + i for i, w in enumerate("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 20 + 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_MULTIPLIERS = {"hundred": 100, "thousand": 1_000, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_ORDINALS = {
    "first": ("ones", 1), "second": ("ones", 2), "third": ("ones", 3), "fourth": ("ones", 4), "fifth": ("ones", 5),
    "sixth": ("ones", 6), "seventh": ("ones", 7), "eighth": ("ones", 8), "ninth": ("ones", 9),
    "tenth": ("teens", 10), "eleventh": ("teens", 11), "twelfth": ("teens", 12), "thirteenth": ("teens", 13),
    "fourteenth": ("teens", 14), "fifteenth": ("teens", 15), "sixteenth": ("teens", 16),
    "seventeenth": ("teens", 17), "eighteenth": ("teens", 18), "nineteenth": ("teens", 19),
    "twentieth": ("tens", 20), "thirtieth": ("tens", 30), "fortieth": ("tens", 40), "fiftieth": ("tens", 50),
    "sixtieth": ("tens", 60), "seventieth": ("tens", 70), "eightieth": ("tens", 80), "ninetieth": ("tens", 90),
    "hundredth": ("mult", 100), "thousandth": ("mult", 1_000), "millionth": ("mult", 10**6), "billionth": ("mult", 10**9),
}
_CURRENCIES = {"dollar": "$", "dollars": "$", "cent": "¢", "cents": "¢", "pound": "£", "pounds": "£", "euro": "€", "euros": "€"}
_NUMERIC = re.compile(r"\d+(?:\.\d+)?")


def _kind(word: str) -> tuple[str, int] | None:
    if word in _ONES:
        return "ones", _ONES[word]
    if word in _TEENS:
        return "teens", _TEENS[word]
    if word in _TENS:
        return "tens", _TENS[word]
    if word in _MULTIPLIERS:
        return "mult", _MULTIPLIERS[word]
    return None


def _ordinal_suffix(value: int) -> str:
    if 11 <= value % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")


def _format(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class _Number:
    """One spoken number being read left to right. Words that cannot continue the current
    number ("nineteen" then "ninety") start a new segment, and segments are written one after
    the other ("1999"), as Whisper does for years and digit sequences."""

    def __init__(self):
        self.segments: list[str] = []
        self.total = 0
        self.current = 0
        self.last: str | None = None  # kind of the last word: ones, teens, tens, mult

    def can_take(self, kind: str) -> bool:
        if kind == "mult":
            return self.last is not None
        if kind == "ones":
            return self.last in (None, "mult", "tens")
        return self.last in (None, "mult")  # teens and tens

    def take(self, kind: str, value: int) -> None:
        if not self.can_take(kind):
            self.close_segment()
        if kind == "mult":
            if value == 100:
                self.current = (self.current or 1) * 100
            else:
                self.total += (self.current or 1) * value
                self.current = 0
        else:
            self.current += value
        self.last = kind

    def close_segment(self) -> None:
        if self.last is not None:
            self.segments.append(_format(self.total + self.current))
        self.total, self.current, self.last = 0, 0, None

    def text(self) -> str:
        self.close_segment()
        return "".join(self.segments)


def _numbers(words: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        nxt = words[i + 1] if i + 1 < len(words) else None
        starts_number = _kind(word) is not None and word not in _MULTIPLIERS
        digits_times = _NUMERIC.fullmatch(word) is not None and nxt in _MULTIPLIERS
        if not (starts_number or word in _ORDINALS or digits_times):
            out.append(word)
            i += 1
            continue
        number, suffix = _Number(), ""
        if digits_times:  # "2 million", "1.5 billion"
            number.current, number.last = float(word), "ones"
            i += 1
        while i < len(words):
            word = words[i]
            nxt = words[i + 1] if i + 1 < len(words) else None
            if word in _ORDINALS:
                kind, value = _ORDINALS[word]
                number.take(kind, value)
                suffix = _ordinal_suffix(int(number.total + number.current))
                i += 1
                break
            kind = _kind(word)
            if kind is not None:
                number.take(*kind)
                i += 1
                continue
            # "one hundred and five": "and" joins only a multiplier to a smaller number
            if word == "and" and number.last == "mult" and nxt is not None and _kind(nxt) and nxt not in _MULTIPLIERS:
                i += 1
                continue
            # "three point one four" → 3.14
            if word == "point" and number.last is not None and nxt in _ONES:
                j = i + 1
                decimals = ""
                while j < len(words) and words[j] in _ONES:
                    decimals += str(_ONES[words[j]])
                    j += 1
                number.current = float(f"{_format(number.total + number.current)}.{decimals}")
                number.total = 0
                i = j
                break
            break
        out.append(number.text() + suffix)

    # units that attach to a number
    result: list[str] = []
    i = 0
    while i < len(out):
        word = out[i]
        nxt = out[i + 1] if i + 1 < len(out) else None
        if _NUMERIC.fullmatch(word) and nxt == "percent":
            result.append(word + "%")
            i += 2
        elif _NUMERIC.fullmatch(word) and nxt == "per" and i + 2 < len(out) and out[i + 2] == "cent":
            result.append(word + "%")
            i += 3
        elif _NUMERIC.fullmatch(word) and nxt in _CURRENCIES:
            result.append(_CURRENCIES[nxt] + word)
            i += 2
        else:
            result.append(word)
            i += 1
    return result


# --------------------------------------------------------------------------- step 6


def _spellings() -> dict[str, str]:
    table: dict[str, str] = {}
    for british in ("colour", "favour", "honour", "humour", "labour", "neighbour", "behaviour", "flavour", "harbour",
                    "rumour", "savour", "vapour", "vigour", "armour", "endeavour", "parlour", "odour", "clamour"):
        american = british[:-3] + "or"
        for suffix in ("", "s", "ed", "ing", "ful", "less", "able", "hood", "ite", "ites", "ably"):
            table[british + suffix] = american + suffix
    for stem in ("cent", "theat", "met", "lit", "fib", "calib", "somb", "spect", "lust", "meag", "sab"):
        table[stem + "re"], table[stem + "res"], table[stem + "red"] = stem + "er", stem + "ers", stem + "ered"
    for stem in ("realis", "organis", "recognis", "apologis", "criticis", "emphasis", "memoris", "summaris",
                 "characteris", "civilis", "prioritis", "specialis", "standardis", "minimis", "maximis",
                 "authoris", "utilis", "visualis", "finalis", "normalis", "customis", "sympathis", "categoris"):
        american = stem[:-1] + "z"
        for suffix in ("e", "es", "ed", "ing", "ation", "ations", "er", "ers"):
            table[stem + suffix] = american + suffix
    for stem in ("analys", "paralys", "catalys"):  # not "analyses": that is also the noun's plural
        for suffix in ("e", "ed", "ing"):
            table[stem + suffix] = stem[:-1] + "z" + suffix
    for british in ("travelled", "travelling", "traveller", "travellers", "cancelled", "cancelling", "labelled",
                    "labelling", "modelled", "modelling", "fuelled", "fuelling", "levelled", "levelling",
                    "signalled", "signalling", "counselled", "counselling", "counsellor", "quarrelled",
                    "marvellous", "jewellery", "dialled", "dialling", "totalled", "channelled"):
        table[british] = british.replace("ll", "l", 1) if british != "jewellery" else "jewelry"
    table.update({
        "grey": "gray", "greys": "grays", "programme": "program", "programmes": "programs", "catalogue": "catalog",
        "catalogues": "catalogs", "dialogue": "dialog", "dialogues": "dialogs", "analogue": "analog",
        "defence": "defense", "offence": "offense", "licence": "license", "pretence": "pretense",
        "practise": "practice", "practised": "practiced", "practising": "practicing", "cheque": "check",
        "cheques": "checks", "tyre": "tire", "tyres": "tires", "aluminium": "aluminum", "plough": "plow",
        "ploughed": "plowed", "sceptical": "skeptical", "sceptic": "skeptic", "mould": "mold", "moulds": "molds",
        "smoulder": "smolder", "manoeuvre": "maneuver", "manoeuvres": "maneuvers", "ageing": "aging",
        "judgement": "judgment", "judgements": "judgments", "acknowledgement": "acknowledgment",
        "enrol": "enroll", "fulfil": "fulfill", "skilful": "skillful", "wilful": "willful",
        "instalment": "installment", "storey": "story", "storeys": "stories", "kerb": "curb",
        "draught": "draft", "pyjamas": "pajamas", "moustache": "mustache", "cosy": "cozy",
        "encyclopaedia": "encyclopedia", "paediatric": "pediatric", "oestrogen": "estrogen",
    })
    return table


SPELLINGS = _spellings()

# --------------------------------------------------------------------------- the normaliser

_BRACKETS = re.compile(r"[<\[][^>\]]*[>\]]")
_PARENTHESES = re.compile(r"\(([^)]+?)\)")
_FILLERS = re.compile(r"\b(hmm|mm|mhm|mmm|uh|um)\b")


def normalize_english(text: str) -> str:
    """Whisper-style English normalisation (see the module docstring)."""
    s = text.lower()
    s = _BRACKETS.sub("", s)
    s = _PARENTHESES.sub("", s)
    s = _FILLERS.sub("", s)
    s = s.replace("’", "'")  # typographic apostrophes, so the contraction rules see them
    s = re.sub(r"\s+'", "'", s)
    for pattern, replacement in _STANDARDISE:
        s = pattern.sub(replacement, s)
    s = re.sub(r"(\d),(\d)", r"\1\2", s)
    s = re.sub(r"\.([^0-9]|$)", r" \1", s)
    s = _remove_symbols_and_diacritics(s)
    words = _numbers(s.split())
    words = [SPELLINGS.get(w, w) for w in words]
    s = " ".join(words)
    s = re.sub(r"[.$¢€£]([^0-9])", r" \1", s + " ")  # a sign with no number after it
    s = re.sub(r"([^0-9])%", r"\1 ", s)
    return " ".join(s.split())
