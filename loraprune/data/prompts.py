"""Prompt templates for instruction records (the response follows the rendered prompt)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PromptTemplate:
    """Prompt strings with ``{instruction}`` / ``{input}`` placeholders; the response follows the prompt."""

    prompt_input: str
    prompt_no_input: str

    def render(self, instruction: str, input_text: str = "") -> str:
        """Prompt text for one record (the with-input variant iff ``input_text`` is non-empty)."""
        if input_text:
            return self.prompt_input.format(instruction=instruction, input=input_text)
        return self.prompt_no_input.format(instruction=instruction)


PROMPT_TEMPLATES: dict[str, PromptTemplate] = {
    # alpaca-lora templates/alpaca.json
    "alpaca": PromptTemplate(
        prompt_input=(
            "Below is an instruction that describes a task, paired with an input that provides further "
            "context. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        prompt_no_input=(
            "Below is an instruction that describes a task. Write a response that appropriately completes "
            "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
        ),
    ),
    "none": PromptTemplate(prompt_input="{instruction}\n{input}\n", prompt_no_input="{instruction}\n"),
}
