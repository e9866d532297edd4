"""``sort``: put a list of common English words in alphabetical order.

Scoring: 1.0 for exactly the sorted list. An answer made of other words (a word missing,
added or changed, counted with multiplicity) scores 0.0. A permutation of the given words
that is not sorted gets partial credit for how far it moved from the given order towards the
sorted one, measured by the longest common subsequence (LCS) with the sorted list:
``(lcs(answer) - lcs(given)) / (n - lcs(given))``, at least 0. Echoing the words in the order
given therefore earns nothing, and partial credit stays below 1.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence

import attrs

from sapo_core.answers import MAX_SCAN_CHARS, build_messages, normalize_answer
from sapo_core.records import Problem
from sapo_core.tasks.levels import OnLadder

# A few hundred common lowercase English words, all distinct.
WORDS: tuple[str, ...] = tuple(
    """
    able about above accept across act add afraid after again age ago agree air all allow
    almost alone along already also always amount angry animal answer apple area arm army
    around arrive art ask attack aunt autumn away baby back bad bag ball bank base basket bath
    bear beautiful bed bee before begin behind believe bell belt bench best better between
    bicycle big bird birth bitter black blade blood blow blue board boat body bone book boot
    bottle box boy brain brake branch brave bread break breath brick bridge bright broken
    brother brown brush bucket build burn butter button cake camera candle card care carpet
    carry cart castle cat cause chain chair chalk chance change cheap cheese chest chief child
    chin church circle city clean clear clock cloud coat cold collar color comb come common
    cook copper corn cotton cough country cover cow crack crime cross crowd cruel cup curtain
    curve cushion damage danger dark daughter day dear debt deep degree desk detail dinner
    dirty dog door drain drawer dream dress drink drop dry dust early earth east edge egg
    eight engine enough even evening event ever example eye face fact fall family farm fat
    father feather feeble field fight finger fire fish flag flame floor flower fly fold food
    foot force fork form forward fowl frame free friend fruit full future garden gate gift
    girl glass glove goat gold good grain grass great green grey grip group growth guide gun
    hair hammer hand happy harbor hat head heart heat help high hill history hole hollow
    honey hook hope horn horse hospital hour house humor ice idea ink iron island jelly jewel
    journey judge jump kettle key king kiss knee knife knot lace lake lamp land language last
    late laugh lead leaf learn leather left leg letter level library lift light limit line
    linen lip liquid list lock long loose loud love low machine map market mass meal meat
    medical meeting memory metal milk mind mine minute mist money monkey month moon morning
    mother motion mountain mouth muscle music nail name narrow nation near neck needle nerve
    net news night noise north nose note number nut ocean office oil old onion open orange
    order oven owner page pain paint paper parcel part paste peace pen pencil person picture
    pig pin pipe plane plant plate pocket point poison polish porter potato powder power
    price prison prize public pump punishment purple push quality question quick quiet rail
    rain range rat ray reading reason receipt record red religion rest reward rhythm rice
    right ring river road rod roll roof room root rough round rule run sad safe sail salt
    sand scale school science scissors screw sea seat secret seed self sense servant shade
    shake shame sheep shelf ship shirt shock shoe short silk silver sister size skin skirt
    sky sleep slope small smell smile smoke snake snow soap sock soft solid son song sound
    soup south space spade sponge spoon spring square stage stamp star station steam steel
    stem stick stone story street string sugar summer sun swim table tail talk taste tax
    teaching tent theory thick thin thread throat thumb ticket tiger time tin toe tongue
    tooth top touch town trade train tray tree trick trouble truck twist umbrella uncle
    valley verse vessel view voice walk wall war wash watch water wave wax way weather week
    weight wheel whip whistle white wide wind window wine wing winter wire woman wood wool
    word work worm wound writer yard yellow young zebra
    """.split()
)

#: Longer answers are refused unread.
MAX_ANSWER_CHARS = 4096

_SEPARATORS = re.compile(r"[,;\s]+")
_DECORATION = "\"'`[](){}."

# One list item on a stripped line: an optional marker ("1.", "2)", "-", "*", "•"), one word,
# optional punctuation. Lines longer than `_MAX_ITEM_CHARS` are no item and are not matched.
_LIST_ITEM = re.compile(r"(?:(?:[0-9]{1,3}[.)]|[-*•])\s*)?([^\W\d_]+)[.,;!]?")
_MAX_ITEM_CHARS = 64


@attrs.frozen
class SortSettings:
    """Settings of the ``sort`` task."""

    #: Fewest words in a list (at least 2, so there is something to sort).
    min_words: int = attrs.field(default=3, validator=[attrs.validators.instance_of(int), attrs.validators.ge(2)])
    #: Most words in a list (at most the size of the built-in word list).
    max_words: int = attrs.field(
        default=5, validator=[attrs.validators.instance_of(int), attrs.validators.le(len(WORDS))]
    )

    def __attrs_post_init__(self) -> None:
        if self.min_words > self.max_words:
            raise ValueError(f"sort: min_words ({self.min_words}) is larger than max_words ({self.max_words})")


def parse_words(answer: str) -> list[str] | None:
    """The words of an answer, lowercased, or None if it is too long.

    Words are separated by commas, semicolons or whitespace; quotes, brackets and a final
    period around a word are dropped, so ``["a", "b"]`` and ``a, b.`` both read as a, b.
    """
    if not isinstance(answer, str) or len(answer) > MAX_ANSWER_CHARS:
        return None
    words = (part.strip(_DECORATION) for part in _SEPARATORS.split(normalize_answer(answer).lower()))
    return [word for word in words if word]


def read_word_list(text: str) -> str | None:
    """The word list a text ends with, as ``a, b, c``, or None.

    Either a final block of two or more one-word lines (list markers allowed), or else the
    last line with a comma, after its last colon, without a standalone "and": the shapes small
    models answer in. Only the last `MAX_SCAN_CHARS` characters are read.
    """
    if not isinstance(text, str):
        return None
    lines = normalize_answer(text[-MAX_SCAN_CHARS:])[-MAX_SCAN_CHARS:].splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    items: list[str] = []
    for line in reversed(lines):
        stripped = line.strip()
        item = _LIST_ITEM.fullmatch(stripped) if len(stripped) <= _MAX_ITEM_CHARS else None
        if item is None:
            break
        items.append(item[1])
    if len(items) >= 2:
        return ", ".join(reversed(items))
    for line in reversed(lines):
        if "," in line:
            words = parse_words(line.rpartition(":")[2])
            if words is None:
                return None
            return ", ".join(word for word in words if word != "and") or None
    return None


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two short sequences (O(len(a) * len(b)))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


class SortTask(OnLadder):
    """Alphabetise a list of words; see the module docstring for the partial-credit rule."""

    name = "sort"
    description = "Sort a list of common English words alphabetically (partial credit by LCS)."

    #: The curriculum's levels: longer lists; the default settings are level 2, near
    #: the bundled SmolLM2-135M's edge (docs/benchmarks.md); level 1's two-word lists can be solved by reversing them.
    ladder = (
        {"min_words": 2, "max_words": 3},
        {"min_words": 3, "max_words": 5},
        {"min_words": 4, "max_words": 8},
        {"min_words": 6, "max_words": 12},
        {"min_words": 8, "max_words": 16},
    )

    def __init__(self, settings: SortSettings | None = None) -> None:
        self.settings = settings or SortSettings()

    def generate(self, seed: int) -> Problem:
        s = self.settings
        rng = random.Random(seed)
        count = rng.randint(s.min_words, s.max_words)
        words = rng.sample(WORDS, count)
        # An already sorted list would make echoing the input a correct answer.
        while words == sorted(words):
            rng.shuffle(words)
        prompt = (
            "Sort these words in alphabetical order:\n\n"
            f"{', '.join(words)}\n\n"
            "Put only the sorted words, separated by commas, in <answer></answer>."
        )
        return Problem(
            task=self.name,
            id=f"{self.name}-{s.min_words}to{s.max_words}-{seed}",
            messages=build_messages(prompt),
            answer=tuple(sorted(words)),
            metadata={"words": tuple(words), "num_words": count},
        )

    def untagged_answer(self, text: str) -> str | None:
        """The final word list of a completion without answer tags (`read_word_list`), for verify to judge."""
        return read_word_list(text)

    def verify(self, problem: Problem, answer: str) -> float:
        expected = _str_list(problem.answer)
        words = parse_words(answer)
        if not expected or expected != sorted(expected) or words is None or Counter(words) != Counter(expected):
            return 0.0
        if words == expected:
            return 1.0
        # Partial credit is measured from the given order; without it (malformed metadata), none.
        given = _str_list(problem.metadata.get("words"))
        if given is None or Counter(given) != Counter(expected):
            return 0.0
        baseline = lcs_length(given, expected)
        if baseline >= len(expected):
            return 0.0
        return max(0.0, (lcs_length(words, expected) - baseline) / (len(expected) - baseline))


def _str_list(value: object) -> list[str] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return None
