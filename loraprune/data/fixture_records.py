"""Small, real-looking records for the fixture mirror (:func:`loraprune.data.mirror.write_fixture_mirror`).

Instruction records are written for this package in the style of LaMini-instruction and
alpaca-cleaned; the WikiText rows follow ``wikitext-2-raw-v1`` (a leading space, `` = Title = ``
headings, empty rows between blocks, each non-empty row ending in ``"\\n"``); the PTB rows are sentences of
the Lee news corpus shipped in ``gensim`` rewritten the way ``ptb_text_only`` spells text (lower case,
numbers as ``N``, no punctuation).
"""

from __future__ import annotations

import re

LAMINI_RECORDS: list[dict[str, str]] = [
    {
        "instruction": "List three benefits of regular exercise.",
        "response": "1. It strengthens the heart and lungs.\n2. It improves mood and sleep.\n"
        "3. It helps to keep a healthy body weight.",
        "instruction_source": "generated_flan",
    },
    {
        "instruction": "What is the capital city of Canada?",
        "response": "The capital city of Canada is Ottawa.",
        "instruction_source": "generated_p3",
    },
    {
        "instruction": 'Write a short sentence using the word "reluctant".',
        "response": "She was reluctant to leave the party before her friends arrived.",
        "instruction_source": "self_instruct_with_topic",
    },
    {
        "instruction": "Explain in one paragraph why the sky looks blue.",
        "response": "Sunlight is made of many colours. When it passes through the air, the short blue "
        "wavelengths are scattered by gas molecules much more than the longer red ones, so blue light "
        "reaches our eyes from every part of the sky.",
        "instruction_source": "alpaca",
    },
    {
        "instruction": "Classify the following animal as a mammal, bird or reptile: penguin.",
        "response": "A penguin is a bird.",
        "instruction_source": "generated_flan",
    },
    {
        "instruction": 'Give two synonyms for the word "happy".',
        "response": "Cheerful and joyful.",
        "instruction_source": "self_instruct_without_topic",
    },
    {
        "instruction": "Summarize the plot of a story about a lost dog finding its way home.",
        "response": "A young dog gets separated from its family during a storm, wanders through "
        "unfamiliar towns, is helped by kind strangers and finally follows a familiar smell back to its "
        "own front door.",
        "instruction_source": "generated_p3",
    },
    {
        "instruction": "Convert 5 kilometres to miles.",
        "response": "5 kilometres is about 3.1 miles.",
        "instruction_source": "generated_flan",
    },
    {
        "instruction": "Suggest a name for a small bakery that sells bread and cakes.",
        "response": "Golden Crust Bakery.",
        "instruction_source": "self_instruct_with_topic",
    },
    {
        "instruction": "Why do leaves change colour in autumn?",
        "response": "As days get shorter, trees stop making chlorophyll, the green pigment. When it "
        "breaks down, the yellow and orange pigments that were there all along become visible.",
        "instruction_source": "alpaca",
    },
    {
        "instruction": "Write a polite email declining an invitation to a meeting.",
        "response": "Dear Ms. Patel,\n\nThank you for inviting me to Thursday's meeting. Unfortunately I "
        "have a prior commitment at that time and will not be able to attend. I would be grateful for a "
        "copy of the notes.\n\nBest regards,\nDaniel",
        "instruction_source": "self_instruct_without_topic",
    },
    {
        "instruction": "What is the boiling point of water at sea level in degrees Celsius?",
        "response": "Water boils at 100 degrees Celsius at sea level.",
        "instruction_source": "generated_p3",
    },
    {
        "instruction": "Name the largest planet in the solar system.",
        "response": "Jupiter is the largest planet in the solar system.",
        "instruction_source": "generated_flan",
    },
    {
        "instruction": "Rewrite the sentence in the passive voice: The chef cooked the meal.",
        "response": "The meal was cooked by the chef.",
        "instruction_source": "generated_flan",
    },
    {
        "instruction": "Describe a quiet morning in a small village.",
        "response": "Mist hangs over the fields, a rooster calls from a farmyard, and the baker opens his "
        "shutters while the first bus of the day rattles slowly down the main street.",
        "instruction_source": "self_instruct_with_topic",
    },
    {
        "instruction": "How many minutes are there in three hours?",
        "response": "There are 180 minutes in three hours.",
        "instruction_source": "generated_p3",
    },
    {
        "instruction": "Give one tip for saving energy at home.",
        "response": "Switch off lights and unplug chargers when you leave a room.",
        "instruction_source": "alpaca",
    },
    {
        "instruction": "What does a thermometer measure?",
        "response": "A thermometer measures temperature.",
        "instruction_source": "generated_flan",
    },
    {
        "instruction": "Create a question that could be asked in a job interview for a teacher.",
        "response": "How do you keep students engaged when a lesson covers difficult material?",
        "instruction_source": "self_instruct_without_topic",
    },
    {
        "instruction": "Is a tomato a fruit or a vegetable?",
        "response": "Botanically a tomato is a fruit, because it develops from a flower and contains "
        "seeds, although it is usually cooked and eaten as a vegetable.",
        "instruction_source": "generated_p3",
    },
    {
        "instruction": "Write a haiku about rain.",
        "response": "Soft rain on the roof\nthe garden drinks in silence\npuddles hold the sky",
        "instruction_source": "self_instruct_with_topic",
    },
    {
        "instruction": "Explain what a budget is to a ten-year-old.",
        "response": "A budget is a plan for your money. You write down what you get and what you want to "
        "spend it on, so that you do not run out before you buy the things that matter most.",
        "instruction_source": "alpaca",
    },
    {
        "instruction": 'Translate "good night" into French.',
        "response": '"Good night" in French is "bonne nuit".',
        "instruction_source": "generated_flan",
    },
    {
        "instruction": "Name three instruments in a string quartet.",
        "response": "Violin, viola and cello.",
        "instruction_source": "generated_p3",
    },
]

ALPACA_RECORDS: list[dict[str, str]] = [
    {
        "output": "Eat a balanced diet, exercise regularly and get enough sleep.",
        "input": "",
        "instruction": "Give three tips for staying healthy.",
    },
    {
        "output": "The three primary colours are red, blue and yellow.",
        "input": "",
        "instruction": "What are the three primary colours?",
    },
    {
        "output": "Positive",
        "input": "I loved the film: the acting was wonderful and the ending made me smile.",
        "instruction": "Classify the sentiment of the review as positive or negative.",
    },
    {
        "output": "The cat sat on the mat.",
        "input": "the cat sat on the mat",
        "instruction": "Correct the capitalization and punctuation of the sentence.",
    },
    {
        "output": "A group of crows is called a murder.",
        "input": "",
        "instruction": "What is a group of crows called?",
    },
    {
        "output": "17",
        "input": "8 + 9",
        "instruction": "Calculate the result of the expression.",
    },
    {
        "output": "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to "
        "make sugar and release oxygen.",
        "input": "",
        "instruction": "Describe photosynthesis in one sentence.",
    },
    {
        "output": "Paris, Berlin, Madrid",
        "input": "France, Germany, Spain",
        "instruction": "Name the capital city of each country.",
    },
    {
        "output": "An apple a day keeps the doctor away.",
        "input": "",
        "instruction": "Tell me a well-known proverb about health.",
    },
    {
        "output": "The meeting has been moved to Friday at 10 a.m. Please update your calendars.",
        "input": "meeting moved friday 10am update calendars",
        "instruction": "Turn the notes into a short, clear announcement.",
    },
    {
        "output": 'A simile compares two things using "like" or "as"; a metaphor says one thing is another.',
        "input": "",
        "instruction": "Explain the difference between a simile and a metaphor.",
    },
    {
        "output": "def reverse(text):\n    return text[::-1]",
        "input": "",
        "instruction": "Write a Python function that reverses a string.",
    },
    {
        "output": "Noun",
        "input": "happiness",
        "instruction": "Identify the part of speech of the word.",
    },
    {
        "output": "The Pacific Ocean is the largest ocean on Earth.",
        "input": "",
        "instruction": "Which ocean is the largest?",
    },
    {
        "output": "Dear team, thank you for your hard work this quarter. Our results are a credit to "
        "everyone.",
        "input": "Audience: team members. Occasion: end of quarter.",
        "instruction": "Write a two-sentence thank-you note.",
    },
    {
        "output": "Spring, summer, autumn and winter.",
        "input": "",
        "instruction": "List the four seasons.",
    },
    {
        "output": "He is going to the market.",
        "input": "He go to the market.",
        "instruction": "Fix the grammar of the sentence.",
    },
    {
        "output": "Recycling reduces waste in landfills, saves raw materials and uses less energy than "
        "making new products.",
        "input": "",
        "instruction": "Why is recycling important?",
    },
    {
        "output": "12 square metres",
        "input": "A rectangle is 3 metres wide and 4 metres long.",
        "instruction": "Find the area of the rectangle.",
    },
    {
        "output": "A quiet lake at dawn, pale light on still water, and a single heron waiting at the edge.",
        "input": "",
        "instruction": "Describe a peaceful scene in one sentence.",
    },
    {
        "output": "Mercury",
        "input": "",
        "instruction": "Which planet is closest to the Sun?",
    },
    {
        "output": "Fruit: apple, banana. Vegetable: carrot, spinach.",
        "input": "apple, carrot, banana, spinach",
        "instruction": "Sort the items into fruit and vegetables.",
    },
    {
        "output": "Could you please send me the report by Monday?",
        "input": "Send me the report by Monday.",
        "instruction": "Make the request more polite.",
    },
    {
        "output": "The water cycle is the continuous movement of water through evaporation, condensation "
        "and precipitation.",
        "input": "",
        "instruction": "Define the water cycle.",
    },
]

WIKITEXT_ARTICLES: list[tuple[str, list[tuple[str | None, list[str]]]]] = [
    (
        "Harbour Lighthouse",
        [
            (
                None,
                [
                    "The Harbour Lighthouse is a stone tower that stands on the northern breakwater of a "
                    "small fishing port . It was built to guide boats past a shallow reef at the mouth of "
                    "the "
                    "harbour , and its light could be seen from about 20 kilometres out at sea .",
                    "The tower is 31 metres tall and is painted in white and red bands . A spiral staircase "
                    "of 148 steps leads to the lantern room , where a rotating lens once turned on a bath of "
                    "mercury .",
                ],
            ),
            (
                "History",
                [
                    "Work on the tower began after a series of winter storms in which several boats were "
                    "lost on the reef . Local merchants raised most of the money , and the light was first "
                    "lit on a clear evening in early spring .",
                    "For most of its working life the lighthouse was kept by a single family . The keepers "
                    "recorded the weather three times a day and rang a bell in fog . The light was "
                    "automated in the late twentieth century , and the keeper 's cottage became a small "
                    "museum .",
                ],
            ),
        ],
    ),
    (
        "River otter",
        [
            (
                None,
                [
                    "River otters are semiaquatic mammals that live along rivers , lakes and marshes . "
                    "They have long , streamlined bodies , webbed feet and dense fur that keeps them warm "
                    "in cold water .",
                ],
            ),
            (
                "Behaviour",
                [
                    "Otters are most active at dawn and dusk . They hunt mainly fish , but also eat frogs , "
                    "crayfish and water birds . An otter can close its ears and nostrils and stay under "
                    "water for several minutes .",
                    "They are known for play , such as sliding down muddy banks or snow into the water . "
                    "Young otters stay with their mother for about a year and learn to swim and hunt by "
                    "following her .",
                ],
            ),
            (
                "Conservation",
                [
                    "In many regions otter numbers fell sharply in the twentieth century because of "
                    "hunting , pollution and the loss of river habitat . Cleaner rivers and legal protection "
                    "have allowed them to return to many places where they had disappeared .",
                ],
            ),
        ],
    ),
    (
        "Sourdough",
        [
            (
                None,
                [
                    "Sourdough is bread made with a starter of flour and water in which wild yeast and "
                    "lactic acid bacteria grow . The bacteria give the bread its slightly sour taste , and "
                    "the yeast makes the dough rise .",
                    "A starter is kept alive by feeding it fresh flour and water , often every day . Some "
                    "bakeries use starters that have been kept going for many decades .",
                ],
            ),
        ],
    ),
]


def wikitext_rows(articles: list[tuple[str, list[tuple[str | None, list[str]]]]]) -> list[str]:
    """Rows in the ``wikitext-2-raw-v1`` style: headings and paragraphs separated by empty rows."""
    rows: list[str] = []
    for title, sections in articles:
        rows += ["", f" = {title} = \n", ""]
        for heading, paragraphs in sections:
            if heading:
                rows += ["", f" = = {heading} = = \n", ""]
            rows += [f" {p} \n" for p in paragraphs]
    return rows


def ptb_style(sentence: str) -> str:
    """A sentence spelled as in ``ptb_text_only``: lower case, numbers as ``N``, words only."""
    text = sentence.lower().replace("'s ", " 's ").replace("n't ", " n't ")
    text = re.sub(r"\d[\d,.:]*", " N ", text)
    text = re.sub(r"[^a-z0-9' N$%&-]", " ", text.replace("-", " "))
    return " ".join(w for w in text.split() if w.strip("'"))


def ptb_sentences(documents: list[str], n: int) -> list[str]:
    """The first ``n`` sentences of at least six words of ``documents``, in PTB spelling."""
    out: list[str] = []
    for doc in documents:
        for sentence in re.split(r"(?<=[.!?])\s+", doc):
            words = ptb_style(sentence)
            if len(words.split()) >= 6:
                out.append(words)
                if len(out) == n:
                    return out
    return out
