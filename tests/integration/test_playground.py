"""The playground at https://HOST/, driven in a real browser (Debian's Chromium, headless, through Playwright)
against the real stack, over TLS that the browser verifies against the stack's CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import ask, enter_key, playground, trusting_home
from tests.conftest import wait_until
from tests.integration.conftest import MODEL, Stack

pytestmark = pytest.mark.integration
ANSWER_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser_home(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trusting_home(tmp_path_factory.mktemp("browser-home"), stack.ca_file)


@pytest.fixture
def page(stack: Stack, browser_home: Path) -> Iterator[Page]:
    with playground(stack.base_url, browser_home) as page:
        yield page


def test_it_lists_the_model_and_streams_an_answer_with_its_numbers(page: Page, stack: Stack) -> None:
    enter_key(page, stack.api_key)
    expect(page.locator(f"#model option[value='{MODEL}']")).to_be_attached()
    ask(page, "What is the capital of France?", max_tokens=32)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".stats")).to_contain_text("finish: ", timeout=ANSWER_TIMEOUT_MS)
    assert "Paris" in answer.inner_text()
    stats = answer.locator(".stats").inner_text()
    for shown in ("time to first token", "tokens/s", "request "):
        assert shown in stats, stats
    assert "finish: stop" in stats or "finish: length" in stats, stats


def test_stop_aborts_a_long_answer_and_the_worker_is_idle_within_a_second(page: Page, stack: Stack) -> None:
    enter_key(page, stack.api_key)
    expect(page.locator(f"#model option[value='{MODEL}']")).to_be_attached()
    ask(page, "Tell me a very long story about a dragon who learns to fly.", max_tokens=2000, temperature=0.8)
    answer = page.locator(".message.assistant").last
    page.wait_for_function("document.querySelector('.message.assistant:last-child').textContent.length > 40")
    assert stack.queue_length() == 1
    page.click("#stop")
    wait_until(lambda: stack.queue_length() == 0, 1.0, "the worker to let go of the answer after Stop", interval=0.05)
    expect(answer.locator(".stats")).to_contain_text("finish: stopped")
    expect(page.locator("#send")).to_be_enabled()


def test_a_wrong_key_is_said_in_a_sentence(page: Page) -> None:
    enter_key(page, "sk-not-a-key")
    expect(page.locator("#error")).to_have_text("The API key is missing or not valid: enter a key this stack accepts.")
