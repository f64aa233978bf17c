//! The plan digests a revision approves: `Drover-Plan: sha256:...` trailers in its commit
//! message, and the lines of the reviewed-digest file [`APPROVALS_FILE`] in its tree. A cluster
//! whose daemon requires an approved plan applies a revision only when the plan it computes
//! against what runs has one of these digests.
//!
//! Both inputs are bounded before they are parsed: only the message's last
//! [`MAX_MESSAGE_BYTES`] (trailers close a message) and a file of at most [`MAX_FILE_BYTES`]
//! are read, and at most [`MAX_APPROVALS`] digests are kept. Anything that is not a well-formed
//! digest is ignored: an approval can only ever be a digest the planner could have printed.

use std::collections::BTreeSet;

/// The reviewed-digest file, relative to the source's subdirectory: one `sha256:...` per line,
/// `#` starts a comment.
pub const APPROVALS_FILE: &str = ".drover/approved-plans";
/// The commit-message trailer that approves a plan.
pub const TRAILER: &str = "Drover-Plan";
/// How much of a commit message's end is searched for trailers.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The largest reviewed-digest file read; a larger one approves nothing.
pub const MAX_FILE_BYTES: usize = 64 * 1024;
/// The most digests one revision approves.
pub const MAX_APPROVALS: usize = 256;

/// The plan digests one revision approves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Approvals {
    digests: BTreeSet<String>,
}

impl Approvals {
    /// The approvals of a commit with `message` and, when its tree has one, the reviewed-digest
    /// file's text.
    pub fn read(message: Option<&str>, file: Option<&str>) -> Approvals {
        let from_message = message.into_iter().flat_map(trailers);
        let from_file = file.into_iter().flat_map(file_lines);
        let digests = from_message
            .chain(from_file)
            .filter(|d| is_digest(d))
            .take(MAX_APPROVALS)
            .collect();
        Approvals { digests }
    }

    pub fn approves(&self, digest: &str) -> bool {
        self.digests.contains(digest)
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.digests.iter().map(String::as_str)
    }
}

/// The values of the message's `Drover-Plan` trailers, parsed as Git parses trailers.
fn trailers(message: &str) -> Vec<String> {
    // libgit2 reads a C string: what follows the last NUL byte is the message's end.
    let tail = last_bytes(message, MAX_MESSAGE_BYTES);
    let tail = tail.rsplit('\0').next().unwrap_or_default();
    let Ok(parsed) = git2::message_trailers_strs(tail) else {
        return Vec::new();
    };
    parsed
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(TRAILER))
        .map(|(_, value)| value.trim().to_string())
        .collect()
}

/// The digests of the reviewed-digest file: one per line, comments and blanks skipped.
fn file_lines(text: &str) -> Vec<String> {
    if text.len() > MAX_FILE_BYTES {
        return Vec::new();
    }
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect()
}

/// `sha256:` and 64 lowercase hex digits, as the planner prints digests.
fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The last `max` bytes of `text`, starting on a character boundary.
fn last_bytes(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn approvals_come_from_trailers_and_the_file() {
        /// Name, message, file, the digests approved.
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [&'a str]);
        let cases: &[Case] = &[
            (
                "trailer",
                Some(&format!("Grow dev\n\nBody.\n\nDrover-Plan: {A}\n")),
                None,
                &[A],
            ),
            (
                "two trailers among others, any case",
                Some(&format!(
                    "Grow\n\nReviewed-by: alice\ndrover-plan: {A}\nDrover-Plan: {B}\n"
                )),
                None,
                &[A, B],
            ),
            (
                "a trailer-like line outside the last paragraph is prose",
                Some(&format!("Grow\n\nDrover-Plan: {A}\n\nSigned-off-by: bob\n")),
                None,
                &[],
            ),
            (
                "the subject alone is no trailer",
                Some(&format!("Drover-Plan: {A}")),
                None,
                &[],
            ),
            (
                "malformed digests approve nothing",
                Some(&format!(
                    "Grow\n\nDrover-Plan: sha256:abc\nDrover-Plan: {}\nDrover-Plan: md5:{}\n",
                    A.to_uppercase(),
                    &A[7..]
                )),
                None,
                &[],
            ),
            (
                "file lines with comments",
                None,
                Some(&format!(
                    "# reviewed in !42\n{A}  # dev\n\n  {B}\nnonsense\n"
                )),
                &[A, B],
            ),
            (
                "both",
                Some(&format!("Grow\n\nDrover-Plan: {A}\n")),
                Some(B),
                &[A, B],
            ),
            (
                "an oversized file approves nothing",
                None,
                Some(&format!("{A}\n{}", "#".repeat(MAX_FILE_BYTES))),
                &[],
            ),
        ];
        for (name, message, file, want) in cases {
            let got = Approvals::read(*message, *file);
            let got: Vec<&str> = got.iter().collect();
            let mut want = want.to_vec();
            want.sort();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn only_the_end_of_a_long_message_is_read() {
        let message = format!("{}\n\nDrover-Plan: {A}\n", "é".repeat(MAX_MESSAGE_BYTES));
        assert!(Approvals::read(Some(&message), None).approves(A));
        let many: String = (0..MAX_APPROVALS + 10)
            .map(|i| format!("sha256:{i:064x}\n"))
            .collect();
        assert_eq!(
            Approvals::read(None, Some(&many)).iter().count(),
            MAX_APPROVALS
        );
    }
}
