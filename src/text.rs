//! Text that clients send, checked once where it is parsed.
//!
//! Postgres refuses a NUL character in `text` (it would surface as a 500 at the insert), and
//! control characters in a name, an e-mail address or an address line are never meant: they
//! break logs, receipts and the apps that show them. Every string field of a request body is one
//! of these two types, so a body carrying one is refused by the JSON extractor (422
//! `invalid_body`, naming the field) before any handler runs. Query strings are checked as a
//! whole by the query extractor, since all their values are single lines.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};

/// The first character of `s` that is not allowed, if any: every control character, except
/// tabs and line breaks where `multiline`.
pub fn forbidden_char(s: &str, multiline: bool) -> Option<char> {
    s.chars()
        .find(|c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))
}

fn checked<'de, D: Deserializer<'de>>(
    deserializer: D,
    multiline: bool,
) -> Result<String, D::Error> {
    let s = String::deserialize(deserializer)?;
    match forbidden_char(&s, multiline) {
        None => Ok(s),
        Some(c) => Err(serde::de::Error::custom(format_args!(
            "text must not contain control characters (found U+{:04X})",
            u32::from(c)
        ))),
    }
}

/// One line of text: a name, an e-mail address, an address line. No control characters.
#[derive(Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
pub struct Line(String);

/// Free text that may span lines: instructions, a description, a reason. Tabs and line breaks
/// are allowed; other control characters are not.
#[derive(Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$")]
pub struct Text(String);

macro_rules! text_type {
    ($name:ident, $multiline:expr) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                checked(deserializer, $multiline).map(Self)
            }
        }

        impl Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
    };
}

text_type!(Line, false);
text_type!(Text, true);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_refuse_every_control_character() {
        for bad in ["a\u{0}b", "tab\there", "new\nline", "bell\u{7}", "c1\u{85}"] {
            let json = serde_json::to_string(bad).expect("json");
            let error = serde_json::from_str::<Line>(&json).expect_err(bad);
            assert!(error.to_string().contains("control characters"), "{error}");
        }
        let ok: Line = serde_json::from_str("\"Main St. 5, Zürich\"").expect("plain line");
        assert_eq!(&*ok, "Main St. 5, Zürich");
    }

    #[test]
    fn texts_allow_line_breaks_and_tabs_but_not_nul() {
        let ok: Text = serde_json::from_str("\"ring twice\\n\\tthen wait\\r\\n\"").expect("text");
        assert_eq!(&*ok, "ring twice\n\tthen wait\r\n");
        assert!(serde_json::from_str::<Text>("\"nul \\u0000 here\"").is_err());
        assert!(serde_json::from_str::<Text>("\"escape \\u001b[31m\"").is_err());
    }

    #[test]
    fn the_first_forbidden_character_is_named() {
        assert_eq!(forbidden_char("ok", false), None);
        assert_eq!(forbidden_char("a\nb\u{0}", true), Some('\u{0}'));
        assert_eq!(forbidden_char("a\nb", false), Some('\n'));
    }
}
