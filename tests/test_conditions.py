import pytest

from alerts.conditions import condition_key, condition_keys


@pytest.mark.parametrize(
    ("phrase", "key"),
    [
        ("Acute-On-Chronic Liver Failure", "acute on chronic liver failure"),
        ("acute on chronic liver failure", "acute on chronic liver failure"),
        ("ACUTE\u2011ON\u2011CHRONIC  LIVER\tFAILURE ", "acute on chronic liver failure"),
        ("Sjögren's Syndrome", "sjogren s syndrome"),
        ("Diabetes Mellitus, Type 2", "diabetes mellitus type 2"),
        ("Degenerative Disc Disease(DDD)", "degenerative disc disease ddd"),
        ("\uff23\uff2f\uff36\uff29\uff24\uff0d\uff11\uff19", "covid 19"),  # full-width
        ("Type2 Diabetes", "type2 diabetes"),
        ("  ---  ", ""),
    ],
)
def test_condition_key_normalizes_case_unicode_punctuation_and_space(phrase: str, key: str) -> None:
    assert condition_key(phrase) == key


def test_condition_keys_are_distinct_and_skip_empty() -> None:
    assert condition_keys(["Herniated Disc", "herniated-disc", "", "Sciatica"]) == ["herniated disc", "sciatica"]
