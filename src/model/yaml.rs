//! A bounded first pass over a YAML file's events, before serde sees it: it refuses deep nesting,
//! alias bombs and too many documents in time and memory linear in the file, and indexes where
//! every value and key starts so later checks can point at the exact text.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span};

use super::diagnostic::{Pos, Problem};

/// Deeper nesting is refused. A cluster file needs about eight levels.
pub const MAX_DEPTH: usize = 64;
/// Nodes a document may hold once its aliases are expanded.
pub const MAX_EXPANDED_NODES: u64 = 200_000;
/// YAML documents (`---`) one file may hold.
pub const MAX_DOCUMENTS: usize = 64;

/// A span in the file: where it starts and how many characters to underline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub pos: Pos,
    pub len: u32,
}

impl Mark {
    pub const START: Mark = Mark {
        pos: Pos::START,
        len: 1,
    };

    fn from_span(span: Span) -> Mark {
        let pos = Pos {
            line: span.start.line() as u32,
            column: span.start.col() as u32 + 1,
        };
        let len = if span.end.line() == span.start.line() {
            span.len().max(1) as u32
        } else {
            1
        };
        Mark { pos, len }
    }
}

/// Where each value and key of one document is, addressed by its path (`spec.nodes[1].name`).
#[derive(Debug, Default)]
pub struct DocIndex {
    /// The document's first event.
    pub start: Option<Mark>,
    /// The document has no content (an empty file, or a trailing `---`).
    pub empty: bool,
    values: HashMap<String, Mark>,
    keys: HashMap<String, Mark>,
}

impl DocIndex {
    /// Where the value at `path` starts; its key, or its parent's, when it has none of its own.
    pub fn value(&self, path: &str) -> Mark {
        self.values
            .get(path)
            .or_else(|| self.keys.get(path))
            .copied()
            .unwrap_or_else(|| self.parent(path))
    }

    /// Where the key of the entry at `path` is; its value when it is a sequence item.
    pub fn key(&self, path: &str) -> Mark {
        self.keys
            .get(path)
            .or_else(|| self.values.get(path))
            .copied()
            .unwrap_or_else(|| self.parent(path))
    }

    /// The span of the value or key that starts at `pos`, if one does.
    pub fn at_pos(&self, pos: Pos) -> Option<Mark> {
        self.keys
            .values()
            .chain(self.values.values())
            .find(|m| m.pos == pos)
            .copied()
    }

    fn parent(&self, path: &str) -> Mark {
        match path.rfind(['.', '[']) {
            Some(i) => self.value(&path[..i]),
            None => self.start.unwrap_or(Mark::START),
        }
    }
}

/// A structural problem found by the first pass, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    pub problem: Problem,
    pub mark: Mark,
}

/// Scans `text` and indexes every document in it.
pub fn index(text: &str) -> Result<Vec<DocIndex>, YamlError> {
    let mut docs: Vec<DocIndex> = Vec::new();
    let mut walk = Walk::default();
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(syntax)?;
        let mark = Mark::from_span(span);
        match event {
            Event::DocumentStart(_) => {
                if docs.len() == MAX_DOCUMENTS {
                    return Err(YamlError {
                        problem: Problem::TooManyDocuments {
                            limit: MAX_DOCUMENTS,
                        },
                        mark,
                    });
                }
                walk = Walk::default();
                docs.push(DocIndex {
                    empty: true,
                    ..DocIndex::default()
                });
            }
            Event::Scalar(value, style, anchor, _) => {
                let doc = docs.last_mut().expect("scalar outside a document");
                if value == "<<" && style == ScalarStyle::Plain && walk.at_key() {
                    return Err(YamlError {
                        problem: Problem::MergeKey,
                        mark,
                    });
                }
                if walk.stack.is_empty() {
                    doc.empty = value.is_empty() || value == "~" || value == "null";
                }
                walk.leaf(doc, mark, Some(&value), anchor, 1)?;
            }
            Event::Alias(id) => {
                let doc = docs.last_mut().expect("alias outside a document");
                let size = walk.sizes.get(&id).copied().unwrap_or(1);
                walk.leaf(doc, mark, None, 0, size)?;
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                let doc = docs.last_mut().expect("collection outside a document");
                doc.empty = false;
                let is_map = matches!(event, Event::MappingStart(..));
                walk.open(doc, mark, is_map, anchor)?;
            }
            Event::MappingEnd | Event::SequenceEnd => walk.close(),
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    for doc in &mut docs {
        if doc.start.is_none() {
            doc.empty = true;
        }
    }
    Ok(docs)
}

fn syntax(err: ScanError) -> YamlError {
    let m = err.marker();
    YamlError {
        problem: Problem::Syntax {
            reason: err.info().to_string(),
        },
        mark: Mark {
            pos: Pos {
                line: m.line() as u32,
                column: m.col() as u32 + 1,
            },
            len: 1,
        },
    }
}

/// The open collections of the document being scanned.
#[derive(Default)]
struct Walk {
    stack: Vec<Frame>,
    /// Expanded node count of each anchored node, for sizing aliases.
    sizes: HashMap<usize, u64>,
    /// Expanded nodes in this document so far.
    total: u64,
}

struct Frame {
    path: String,
    is_map: bool,
    /// For a mapping: the next event is a key. For a sequence: unused.
    at_key: bool,
    /// For a mapping: the path of the entry whose value comes next.
    entry: String,
    /// For a sequence: the index of the next item.
    next: usize,
    anchor: usize,
    size: u64,
}

impl Walk {
    /// Whether the next node is a mapping key.
    fn at_key(&self) -> bool {
        matches!(self.stack.last(), Some(f) if f.is_map && f.at_key)
    }

    /// The path of the node that starts now, and whether it is a mapping key.
    fn child_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some(f) if f.is_map && f.at_key => (String::new(), true),
            Some(f) if f.is_map => (f.entry.clone(), false),
            Some(f) => (format!("{}[{}]", f.path, f.next), false),
        }
    }

    fn leaf(
        &mut self,
        doc: &mut DocIndex,
        mark: Mark,
        scalar: Option<&str>,
        anchor: usize,
        size: u64,
    ) -> Result<(), YamlError> {
        self.count(size, mark)?;
        if anchor != 0 {
            self.sizes.insert(anchor, 1);
        }
        doc.start.get_or_insert(mark);
        let (path, is_key) = self.child_path();
        if is_key {
            let frame = self.stack.last_mut().expect("key outside a mapping");
            let key = scalar.unwrap_or("?");
            frame.entry = join(&frame.path, key);
            doc.keys.entry(frame.entry.clone()).or_insert(mark);
        } else {
            doc.values.entry(path).or_insert(mark);
        }
        self.advance(size);
        Ok(())
    }

    fn open(
        &mut self,
        doc: &mut DocIndex,
        mark: Mark,
        is_map: bool,
        anchor: usize,
    ) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError {
                problem: Problem::TooDeep { limit: MAX_DEPTH },
                mark,
            });
        }
        self.count(1, mark)?;
        doc.start.get_or_insert(mark);
        let (path, is_key) = self.child_path();
        let path = if is_key {
            // A complex key: give it a path no lookup will ask for.
            let parent = &self.stack.last().expect("key outside a mapping").path;
            join(parent, "?")
        } else {
            doc.values.entry(path.clone()).or_insert(mark);
            path
        };
        self.stack.push(Frame {
            path,
            is_map,
            at_key: true,
            entry: String::new(),
            next: 0,
            anchor,
            size: 1,
        });
        Ok(())
    }

    fn close(&mut self) {
        let Some(frame) = self.stack.pop() else {
            return;
        };
        if frame.anchor != 0 {
            self.sizes.insert(frame.anchor, frame.size);
        }
        let was_key = matches!(self.stack.last(), Some(p) if p.is_map && p.at_key);
        if was_key {
            let parent = self.stack.last_mut().expect("checked above");
            parent.entry = join(&parent.path, "?");
        }
        self.advance(frame.size);
    }

    /// Moves the innermost collection past the node that just ended.
    fn advance(&mut self, size: u64) {
        if let Some(f) = self.stack.last_mut() {
            f.size = f.size.saturating_add(size);
            if f.is_map {
                f.at_key = !f.at_key;
            } else {
                f.next += 1;
            }
        }
    }

    fn count(&mut self, size: u64, mark: Mark) -> Result<(), YamlError> {
        self.total = self.total.saturating_add(size);
        if self.total > MAX_EXPANDED_NODES {
            return Err(YamlError {
                problem: Problem::AliasExpansion {
                    limit: MAX_EXPANDED_NODES,
                },
                mark,
            });
        }
        Ok(())
    }
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(doc: &DocIndex, path: &str) -> (u32, u32, u32) {
        let m = doc.value(path);
        (m.pos.line, m.pos.column, m.len)
    }

    #[test]
    fn indexes_values_keys_and_items() {
        let text = "a:\n  b: hello\n  list:\n    - x\n    - {c: 1}\n";
        let docs = index(text).unwrap();
        assert_eq!(docs.len(), 1);
        let d = &docs[0];
        assert_eq!(at(d, "a.b"), (2, 6, 5));
        assert_eq!(at(d, "a.list[0]"), (4, 7, 1));
        assert_eq!(at(d, "a.list[1].c"), (5, 11, 1));
        let k = d.key("a.list");
        assert_eq!((k.pos.line, k.pos.column), (3, 3));
        // A missing path falls back to its nearest indexed parent.
        assert_eq!(at(d, "a.list[1].missing"), (5, 7, 1));
    }

    #[test]
    fn counts_documents_and_empty_ones() {
        let docs = index("a: 1\n---\n---\nb: 2\n").unwrap();
        let empty: Vec<bool> = docs.iter().map(|d| d.empty).collect();
        assert_eq!(empty, vec![false, true, false]);
        assert!(index("").unwrap().iter().all(|d| d.empty));
        assert!(index("# only a comment\n").unwrap().iter().all(|d| d.empty));
    }

    #[test]
    fn refuses_alias_bombs() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let refs = vec![format!("*a{}", i - 1); 10].join(", ");
            text.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let err = index(&text).unwrap_err();
        assert_eq!(err.problem.code(), "alias-expansion");
    }

    #[test]
    fn refuses_deep_nesting_without_recursing() {
        // Flow style: the scanner's own recursion limit or ours, whichever comes first.
        let err = index(&"[".repeat(100_000)).unwrap_err();
        assert!(
            matches!(&err.problem, Problem::TooDeep { .. })
                || matches!(&err.problem, Problem::Syntax { reason } if reason.contains("recursion")),
            "{err:?}"
        );
        // Block style reaches our limit, at the first node past it.
        let block: String = (0..100)
            .map(|d| format!("{}k{d}:\n", " ".repeat(d)))
            .collect();
        let err = index(&block).unwrap_err();
        assert_eq!(err.problem, Problem::TooDeep { limit: MAX_DEPTH });
        assert_eq!(err.mark.pos.line, MAX_DEPTH as u32 + 1);
    }

    #[test]
    fn reports_syntax_errors_with_position() {
        let err = index("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(err.problem.code(), "yaml-syntax");
        assert!(err.mark.pos.line >= 1);
    }
}
