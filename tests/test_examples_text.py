"""The text examples of the sequence layers: a character-level language model on the standard
library's source, and the functional guide's multi-input, multi-output ticket model."""
import re

from conftest import REPO_ROOT, load_example, run_python


def test_char_language_model_learns_the_standard_library_source():
    """A short run (60,000 characters, 2 epochs) already beats a uniform guess over 96 symbols by far."""
    printed = run_python([str(REPO_ROOT / "examples" / "char_lm.py"), "--chars", "60000", "--epochs", "2",
                          "--units", "64", "--verbose", "0"], timeout=300).stdout
    perplexity = float(re.search(r"validation_perplexity=([0-9.]+)", printed).group(1))
    assert perplexity < 20, printed[-500:]
    assert len(printed.splitlines()) > 1  # the generated text comes first


def test_ticket_model_learns_both_outputs():
    history = load_example("ticket_routing").main(["--samples", "640", "--epochs", "3", "--verbose", "0"])
    assert set(history) == {"loss", "priority_loss", "department_loss", "department_accuracy"}
    assert history["loss"][-1] < history["loss"][0]
    assert history["department_accuracy"][-1] > 0.5  # four departments: chance is 0.25
