use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// The chunks' texts.
fn texts(text: &str, max: usize) -> Vec<String> {
    checked(text, max).into_iter().map(|c| c.text).collect()
}

/// `split(text, max)`, once every promise of [`split`] is checked: chunks
/// in order, none empty, none longer than the limit, each the piece of the
/// normalised text at its offset, separated by one space or nothing, and
/// together the whole normalised text.
fn checked(text: &str, max: usize) -> Vec<Chunk> {
    let chunks = split(text, max);
    let normalized: Vec<char> = normalize_text(text).chars().collect();
    let mut rebuilt = String::new();
    let mut end = 0;
    for chunk in &chunks {
        let len = chunk.text.chars().count();
        assert!(len >= 1, "an empty chunk in {chunks:?}");
        assert!(len <= max.max(1), "{len} > {max} characters: {chunk:?}");
        assert!(chunk.offset >= end, "chunks out of order: {chunks:?}");
        let gap: String = normalized[end..chunk.offset].iter().collect();
        if rebuilt.is_empty() {
            assert_eq!(chunk.offset, 0, "text lost at the start: {chunks:?}");
        } else {
            assert!(
                gap.is_empty() || gap == " ",
                "{gap:?} between chunks: {chunks:?}"
            );
        }
        let at_offset: String = normalized[chunk.offset..chunk.offset + len]
            .iter()
            .collect();
        assert_eq!(at_offset, chunk.text, "the text at the chunk's offset");
        assert_eq!(
            normalize_text(&chunk.text),
            chunk.text,
            "a normalised chunk"
        );
        rebuilt.push_str(&gap);
        rebuilt.push_str(&chunk.text);
        end = chunk.offset + len;
    }
    assert_eq!(end, normalized.len(), "text lost at the end: {chunks:?}");
    assert_eq!(rebuilt, normalize_text(text));
    chunks
}

#[test]
fn each_paragraph_is_its_own_chunk_and_short_ones_are_never_packed() {
    let text = "  Chapter One\n\nIt was a dark night.  The rain fell.\r\n \t\r\nThe end.\n";

    let chunks = checked(text, 1_000);

    assert_eq!(
        chunks,
        [
            Chunk {
                text: "Chapter One".into(),
                offset: 0
            },
            Chunk {
                text: "It was a dark night. The rain fell.".into(),
                offset: 12
            },
            Chunk {
                text: "The end.".into(),
                offset: 48
            },
        ]
    );
}

#[test]
fn a_single_line_break_does_not_end_a_paragraph_but_a_paragraph_separator_does() {
    assert_eq!(
        texts("one line\nand the next", 100),
        ["one line and the next"]
    );
    assert_eq!(texts("one\u{2029}two", 100), ["one", "two"]);
    assert_eq!(texts("one\r\rtwo", 100), ["one", "two"]);
}

#[test]
fn a_long_paragraph_packs_whole_sentences_greedily() {
    let text = "The first sentence is here. A second one follows! Does a third? Yes.";

    assert_eq!(
        texts(text, 50),
        [
            "The first sentence is here. A second one follows!",
            "Does a third? Yes."
        ]
    );
    assert_eq!(
        texts(text, 30),
        [
            "The first sentence is here.",
            "A second one follows!",
            "Does a third? Yes."
        ]
    );
}

#[test]
fn closing_quotes_and_brackets_stay_with_their_sentence() {
    let text = "He said \"Stop.\" Then he left. (It was late.) Nobody followed.";

    assert_eq!(
        texts(text, 20),
        [
            "He said \"Stop.\"",
            "Then he left.",
            "(It was late.)",
            "Nobody followed."
        ]
    );
}

#[test]
fn abbreviations_initials_and_numbers_end_no_sentence() {
    let text = "Dr. Smith measured 3.14 metres. Mr. J. R. R. Tolkien of the U.S. Army wrote 1.000.000 words, e.g. these. Page No. 5 is here. I said no. Fine.";

    assert_eq!(
        texts(text, 60),
        [
            "Dr. Smith measured 3.14 metres.",
            "Mr. J. R. R. Tolkien of the U.S. Army wrote 1.000.000 words,",
            "e.g. these. Page No. 5 is here. I said no. Fine.",
        ],
        "the second sentence is too long: it is split at its comma"
    );
    assert_eq!(
        texts("Ask PROF. X about it. Or not.", 22),
        ["Ask PROF. X about it.", "Or not."],
        "abbreviations are known whatever their case"
    );
    assert_eq!(texts("I said no. Fine.", 12), ["I said no.", "Fine."]);
}

#[test]
fn an_ellipsis_before_a_lowercase_word_and_a_quoted_question_before_its_speaker_end_nothing() {
    let text = "Well... maybe not. \"Why?\" she asked. Wait… Now!";

    assert_eq!(
        texts(text, 20),
        ["Well... maybe not.", "\"Why?\" she asked.", "Wait… Now!"]
    );
    assert_eq!(texts("Wait… Now!", 6), ["Wait…", "Now!"]);
}

/// The sentences [`split`] sees in `paragraph` (normalised).
fn sentence_texts(paragraph: &str) -> Vec<&str> {
    sentences(paragraph)
        .into_iter()
        .map(|r| &paragraph[r])
        .collect()
}

/// The clauses [`split`] sees in `sentence` (normalised).
fn clause_texts(sentence: &str) -> Vec<&str> {
    clauses(sentence)
        .into_iter()
        .map(|r| &sentence[r])
        .collect()
}

#[test]
fn sentence_ends_are_found_and_abbreviations_initials_numbers_and_quotes_are_not_ends() {
    let cases: &[(&str, &[&str])] = &[
        (
            "Dr. Smith is here. He waits.",
            &["Dr. Smith is here.", "He waits."],
        ),
        (
            "It is 3.14 or 1.000.000. Yes.",
            &["It is 3.14 or 1.000.000.", "Yes."],
        ),
        (
            "J. R. R. Tolkien left the U.S. Army.",
            &["J. R. R. Tolkien left the U.S. Army."],
        ),
        (
            "Apples, pears, etc. are fruit, e.g. these.",
            &["Apples, pears, etc. are fruit, e.g. these."],
        ),
        (
            "(Mrs. Jones vs. MT. Everest.) Next!",
            &["(Mrs. Jones vs. MT. Everest.)", "Next!"],
        ),
        (
            "See No. 5 and Fig. 2. I said no. Fine.",
            &["See No. 5 and Fig. 2.", "I said no.", "Fine."],
        ),
        (
            "Well... maybe. Wait… Now. So… what?!",
            &["Well... maybe.", "Wait…", "Now.", "So… what?!"],
        ),
        (
            "\"Why?\" she asked. \"Go!\" He went.",
            &["\"Why?\" she asked.", "\"Go!\"", "He went."],
        ),
        (
            "It ends here.\u{201d} Then?",
            &["It ends here.\u{201d}", "Then?"],
        ),
        (
            "今天很好。我们走吧！好吗？",
            &["今天很好。", "我们走吧！", "好吗？"],
        ),
        (
            "「はい。」と彼は言った。「いいえ。」「そう？」",
            &["「はい。」と彼は言った。", "「いいえ。」", "「そう？」"],
        ),
        (
            "円周率は３．１４です。以上．終わり",
            &["円周率は３．１４です。", "以上．", "終わり"],
        ),
        ("Hello. 你好。 Bye.", &["Hello.", "你好。", "Bye."]),
        ("...", &["..."]),
    ];
    for (paragraph, expected) in cases {
        assert_eq!(&sentence_texts(paragraph), expected, "{paragraph}");
    }
}

#[test]
fn clause_ends_are_marks_followed_by_a_space_dashes_and_cjk_marks() {
    let cases: &[(&str, &[&str])] = &[
        (
            "One, two; three: four.",
            &["One,", "two;", "three:", "four."],
        ),
        (
            "1,000 at 12:30 in 1990–2000",
            &["1,000 at 12:30 in 1990–2000"],
        ),
        (
            "this – that — then—now",
            &["this –", "that —", "then—", "now"],
        ),
        ("\"Yes,\" he said", &["\"Yes,\"", "he said"]),
        (
            "春天来了，花开了、鸟；好：",
            &["春天来了，", "花开了、", "鸟；", "好："],
        ),
    ];
    for (sentence, expected) in cases {
        assert_eq!(&clause_texts(sentence), expected, "{sentence}");
    }
}

#[test]
fn cjk_sentences_are_kept_whole_and_need_no_space() {
    let chinese = "今天天气很好。我们去公园散步吧！你觉得怎么样？好的。";
    let japanese = "「こんにちは。」と彼は言った。今日は晴れです！散歩に行きましょう？";

    assert_eq!(
        texts(chinese, 12),
        [
            "今天天气很好。",
            "我们去公园散步吧！",
            "你觉得怎么样？好的。"
        ]
    );
    assert_eq!(
        texts(japanese, 16),
        [
            "「こんにちは。」と彼は言った。",
            "今日は晴れです！",
            "散歩に行きましょう？"
        ]
    );
    assert_eq!(
        texts("以上。円周率は３．１４です。", 9),
        ["以上。", "円周率は３．１４で", "す。"],
        "a fullwidth decimal point ends no sentence: the sentence is too long and is cut"
    );
}

#[test]
fn a_long_cjk_sentence_is_split_at_its_clauses_first() {
    let text = "春天来了，花开了，鸟儿在唱歌；孩子们在公园里玩耍。";

    assert_eq!(
        texts(text, 10),
        ["春天来了，花开了，", "鸟儿在唱歌；", "孩子们在公园里玩耍。"]
    );
}

#[test]
fn a_very_long_sentence_is_split_at_clauses_then_at_spaces() {
    let text = "When the long sentence began, nobody expected it to go on; it went on and on without any end in sight: words, more words — and then some.";

    assert_eq!(
        texts(text, 40),
        [
            "When the long sentence began,",
            "nobody expected it to go on;",
            "it went on and on without any end in",
            "sight: words, more words —",
            "and then some.",
        ]
    );
}

#[test]
fn a_clause_with_no_boundary_is_split_at_spaces_and_numbers_keep_their_commas() {
    let text = "one two three four five six seven eight nine ten 1,000,000 twelve";

    assert_eq!(
        texts(text, 20),
        [
            "one two three four",
            "five six seven eight",
            "nine ten 1,000,000",
            "twelve"
        ]
    );
}

#[test]
fn a_word_longer_than_the_limit_is_cut_between_grapheme_clusters() {
    let flags = "🇫🇷🇩🇪🇮🇹";
    let accented = "e\u{0301}e\u{0301}e\u{0301}"; // NFC composes each into one `é`
    let dotted = "q\u{0307}q\u{0307}q\u{0307}"; // no precomposed q̇: 2 chars each
    let devanagari = "नमस्ते"; // clusters: न, म, स्ते (4 chars)

    assert_eq!(texts(flags, 3), ["🇫🇷", "🇩🇪", "🇮🇹"]);
    assert_eq!(texts(accented, 2), ["éé", "é"]);
    assert_eq!(texts(dotted, 3), ["q\u{0307}"; 3]);
    assert_eq!(texts(&format!("{devanagari} ok"), 4), ["नम", "स्ते", "ok"]);
    assert_eq!(
        texts(devanagari, 2),
        ["नम", "स्", "ते"],
        "a cluster longer than the limit is cut between characters"
    );
}

#[test]
fn an_unspaced_cjk_run_longer_than_the_limit_is_cut_between_characters() {
    assert_eq!(
        texts("一二三四五六七八九十", 4),
        ["一二三四", "五六七八", "九十"]
    );
}

#[test]
fn empty_texts_have_no_chunks_and_a_zero_limit_counts_as_one() {
    assert!(split("", 10).is_empty());
    assert!(split(" \n\n \t", 10).is_empty());
    assert_eq!(texts("ab c", 0), ["a", "b", "c"]);
    assert_eq!(texts("Hi. Yo.", 1), ["H", "i", ".", "Y", "o", "."]);
}

#[test]
fn two_hundred_thousand_characters_split_in_linear_time() {
    let prose =
        "Dr. Smith said, at 3.14 o'clock: the U.S. is big — very big. 今天天气很好。".repeat(2_700);
    let one_word = "x".repeat(200_000);
    let dots = "a. ".repeat(66_000);
    let cjk_clauses = "好，".repeat(100_000);

    for text in [&prose, &one_word, &dots, &cjk_clauses] {
        let started = Instant::now();
        let chunks = split(text, 4_096);
        let took = started.elapsed();
        assert!(!chunks.is_empty());
        // Quadratic work would take minutes on 200,000 characters.
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }
}

/// Paragraphs of random text: Latin words with sentence and clause marks,
/// CJK runs, quotes, brackets, numbers, combining marks and emoji.
fn paragraph() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 .,;:!?…\"'()—–\u{0301}。！？、，．一-龥あ-んé🇫🇷 \t\n]{1,200}"
        .prop_filter("a paragraph has some text and no blank line", |p| {
            !p.trim().is_empty() && paragraphs(p).1.len() == 1
        })
}

/// Latin prose: words of letters and digits with punctuation, one or more
/// whitespace characters between them.
fn prose() -> impl Strategy<Value = String> {
    "([A-Za-z0-9]{1,12}[.,;:!?]?[\"')]?[ \n\t]{1,3}){0,60}"
}

proptest! {
    #[test]
    fn every_text_splits_into_its_normalised_text_under_the_limit(
        text in "[a-zA-Z0-9 .,;:!?…\"'()—–\u{0301}。！？、，．一-龥é🇫🇷 \t\n\r]{0,400}",
        max in 0usize..40,
    ) {
        checked(&text, max);
    }

    #[test]
    fn a_text_splits_as_its_paragraphs_do_one_by_one(
        paragraphs in prop::collection::vec(paragraph(), 1..6),
        separators in prop::collection::vec("[ \t]*\n[ \t]*\n[ \n\t]*", 6),
        max in 1usize..80,
    ) {
        let mut whole = String::new();
        for (i, p) in paragraphs.iter().enumerate() {
            if i > 0 {
                whole.push_str(&separators[i]);
            }
            whole.push_str(p);
        }

        let one_by_one: Vec<String> = paragraphs.iter().flat_map(|p| texts(p, max)).collect();

        prop_assert_eq!(texts(&whole, max), one_by_one);
    }

    #[test]
    fn editing_one_paragraph_changes_only_its_chunks(
        paragraphs in prop::collection::vec(paragraph(), 1..6),
        edited in paragraph(),
        at in any::<prop::sample::Index>(),
        max in 1usize..80,
    ) {
        let at = at.index(paragraphs.len());
        let mut changed = paragraphs.clone();
        changed[at] = edited;

        let before = texts(&paragraphs.join("\n\n"), max);
        let after = texts(&changed.join("\n\n"), max);

        let ahead: usize = paragraphs[..at].iter().map(|p| texts(p, max).len()).sum();
        let behind: usize = paragraphs[at + 1..].iter().map(|p| texts(p, max).len()).sum();
        prop_assert_eq!(&before[..ahead], &after[..ahead]);
        prop_assert_eq!(&before[before.len() - behind..], &after[after.len() - behind..]);
    }

    #[test]
    fn latin_words_are_never_cut_when_each_fits(text in prose(), max in 12usize..100) {
        let words: Vec<String> = normalize_text(&text).split(' ').map(str::to_owned).collect();
        prop_assume!(words.iter().all(|w| w.chars().count() <= max));

        let chunked: Vec<String> = texts(&text, max)
            .iter()
            .flat_map(|c| c.split(' ').map(str::to_owned).collect::<Vec<_>>())
            .collect();

        prop_assert_eq!(chunked, words.into_iter().filter(|w| !w.is_empty()).collect::<Vec<_>>());
    }
}
