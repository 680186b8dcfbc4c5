//! Escaping, anchors and the little Markdown the document's descriptions
//! use (paragraphs, `- ` lists, `code`, `**strong**`, `<https://…>` and
//! `[text](https://…)` links). Everything from the document passes through
//! [`escape`] before any tag is added around it.

/// `text` with `&`, `<`, `>`, `"` and `'` escaped: safe in element content
/// and in quoted attribute values alike.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An element id made of `prefix` and `name`: ASCII letters, digits, `-`,
/// `_` and `.` are kept, anything else becomes `-`, so the id needs no
/// escaping and a `#fragment` link to it none either.
pub fn anchor(prefix: &str, name: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + 1 + name.len());
    id.push_str(prefix);
    id.push('-');
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            id.push(c);
        } else {
            id.push('-');
        }
    }
    id
}

/// A description as HTML blocks: blank lines part paragraphs, lines
/// opening with `- ` make a list; single line breaks are spaces.
pub fn blocks(text: &str) -> String {
    let mut out = String::new();
    for block in text.split("\n\n") {
        let lines: Vec<&str> = block
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if lines.is_empty() {
            continue;
        }
        if lines.iter().all(|l| l.starts_with("- ")) {
            out.push_str("<ul>");
            for line in lines {
                out.push_str("<li>");
                out.push_str(&inline(&line[2..]));
                out.push_str("</li>");
            }
            out.push_str("</ul>");
        } else {
            out.push_str("<p>");
            out.push_str(&inline(&lines.join(" ")));
            out.push_str("</p>");
        }
    }
    out
}

/// One line of Markdown as inline HTML: code spans (whose content is only
/// escaped), strong text and links to `http(s)` URLs.
pub fn inline(text: &str) -> String {
    let text = without_intra_doc_brackets(text);
    let parts: Vec<&str> = text.split('`').collect();
    let mut out = String::with_capacity(text.len() + 16);
    for (i, part) in parts.iter().enumerate() {
        let in_code = i % 2 == 1;
        if in_code && i == parts.len() - 1 {
            // An unpaired final backtick is text, not the start of a code span.
            out.push_str(&prose(&format!("`{part}")));
        } else if in_code {
            out.push_str("<code>");
            out.push_str(&escape(part));
            out.push_str("</code>");
        } else {
            out.push_str(&prose(part));
        }
    }
    out
}

/// `text` with rustdoc's intra-doc links (``[`Problem`]``), which mean
/// nothing outside the code, left as code spans.
fn without_intra_doc_brackets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("[`") {
        let after = &rest[open + 2..];
        match after.find("`]") {
            Some(close)
                if !after[close + 2..].starts_with('(') && !after[..close].contains('`') =>
            {
                out.push_str(&rest[..open]);
                out.push('`');
                out.push_str(&after[..close]);
                out.push('`');
                rest = &after[close + 2..];
            }
            _ => {
                out.push_str(&rest[..open + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text outside code spans: escaped, with links and `**strong**`.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<')
            && let Some(end) = after.find('>')
            && is_web_url(&after[..end])
        {
            let url = &after[..end];
            out.push_str(&link(url, url));
            rest = &after[end + 1..];
            continue;
        }
        if let Some(after) = rest.strip_prefix('[')
            && let Some(close) = after.find("](")
            && let Some(end) = after[close + 2..].find(')')
        {
            let label = &after[..close];
            let url = &after[close + 2..close + 2 + end];
            if is_web_url(url) && !label.contains('[') {
                out.push_str(&link(url, label));
                rest = &after[close + 3 + end..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix("**")
            && let Some(end) = after.find("**")
            && end > 0
        {
            out.push_str("<strong>");
            out.push_str(&escape(&after[..end]));
            out.push_str("</strong>");
            rest = &after[end + 2..];
            continue;
        }
        let next = rest[1..]
            .find(['<', '[', '*'])
            .map_or(rest.len(), |i| i + 1);
        out.push_str(&escape(&rest[..next]));
        rest = &rest[next..];
    }
    out
}

fn is_web_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://"))
        && !text.contains(|c: char| c.is_whitespace() || c == '"' || c == '<')
}

fn link(url: &str, label: &str) -> String {
    format!(
        "<a href=\"{}\" rel=\"noreferrer\">{}</a>",
        escape(url),
        escape(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_from_the_document_is_escaped_not_interpreted() {
        let html = inline("<script>alert('x')</script> & \"quotes\"");
        assert_eq!(
            html,
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;quotes&quot;"
        );
    }

    #[test]
    fn code_spans_links_and_strong_text_are_rendered() {
        assert_eq!(
            inline("Use `a<b>` and **this**, see <https://example.org/x?a=1&b=2>."),
            "Use <code>a&lt;b&gt;</code> and <strong>this</strong>, see \
             <a href=\"https://example.org/x?a=1&amp;b=2\" rel=\"noreferrer\">\
             https://example.org/x?a=1&amp;b=2</a>."
        );
        assert_eq!(
            inline("[spec](https://spec.example/a) [bad](javascript:alert(1))"),
            "<a href=\"https://spec.example/a\" rel=\"noreferrer\">spec</a> \
             [bad](javascript:alert(1))"
        );
    }

    #[test]
    fn intra_doc_links_read_as_code() {
        assert_eq!(
            inline("a [`Problem`] with [`x`](https://e.org)"),
            "a <code>Problem</code> with [<code>x</code>](https://e.org)"
        );
    }

    #[test]
    fn an_unpaired_backtick_stays_text() {
        assert_eq!(inline("a `b` c ` d<"), "a <code>b</code> c ` d&lt;");
    }

    #[test]
    fn blocks_make_paragraphs_and_lists() {
        assert_eq!(
            blocks("One\nline.\n\n- a\n- `b`\n"),
            "<p>One line.</p><ul><li>a</li><li><code>b</code></li></ul>"
        );
    }

    #[test]
    fn anchors_keep_only_safe_characters() {
        assert_eq!(anchor("op", "GET /v1/{id}\"x"), "op-GET--v1--id--x");
    }
}
