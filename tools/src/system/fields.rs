//! Reading typed values out of a TOML table while collecting every
//! problem, each under its full key path (`vm[1].cpus`), instead of
//! stopping at the first as serde would.

use toml::{Table, Value};

use super::{ConfigError, ConfigErrors, MAX_SHOWN};

/// The problems found so far in one file: the first [`MAX_SHOWN`] in
/// full, the rest only counted, so a file with millions of mistakes costs
/// no more memory than one with forty.
#[derive(Debug)]
pub struct Problems {
    file: std::path::PathBuf,
    pub list: Vec<ConfigError>,
    /// Problems found after the list was full.
    pub omitted: usize,
}

impl Problems {
    pub fn new(file: &std::path::Path) -> Self {
        Problems {
            file: file.to_path_buf(),
            list: Vec::new(),
            omitted: 0,
        }
    }

    pub fn add(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        if self.list.len() >= MAX_SHOWN {
            self.omitted += 1;
            return;
        }
        self.list.push(ConfigError {
            file: self.file.clone(),
            position: None,
            key: Some(key.into()),
            reason: reason.into(),
        });
    }

    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.list, self.omitted)
    }
}

/// One table of the file and its key path (empty for the top level).
#[derive(Clone, Copy, Debug)]
pub struct Fields<'a> {
    path: &'a str,
    table: &'a Table,
}

impl<'a> Fields<'a> {
    pub fn new(path: &'a str, table: &'a Table) -> Self {
        Fields { path, table }
    }

    /// The full key path of `name` in this table. A name that is not a
    /// bare TOML key (empty, or with spaces, dots, quotes, control
    /// characters) is quoted, so the path stays one unambiguous word:
    /// `vm[0]."a b"`.
    pub fn key(&self, name: &str) -> String {
        let name = key_part(name);
        if self.path.is_empty() {
            name
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Reports each key that is not in `expected`, which is listed in the
    /// message in the order the documentation gives it.
    pub fn reject_unknown(&self, expected: &[&str], problems: &mut Problems) {
        for name in self.table.keys() {
            if !expected.contains(&name.as_str()) {
                problems.add(
                    self.key(name),
                    format!("unknown key (expected one of: {})", expected.join(", ")),
                );
            }
        }
    }

    /// The value of `name`; a missing required key is reported.
    pub fn value(&self, name: &str, required: bool, problems: &mut Problems) -> Option<&'a Value> {
        let value = self.table.get(name);
        if value.is_none() && required {
            problems.add(self.key(name), "missing");
        }
        value
    }

    /// The value of `name` converted by `convert`; a value of another type
    /// is reported as "must be `what`, not <the value>".
    pub fn typed<T>(
        &self,
        name: &str,
        required: bool,
        what: &str,
        convert: impl FnOnce(&'a Value) -> Option<T>,
        problems: &mut Problems,
    ) -> Option<T> {
        let value = self.value(name, required, problems)?;
        let converted = convert(value);
        if converted.is_none() {
            problems.add(
                self.key(name),
                format!("must be {what}, not {}", describe(value)),
            );
        }
        converted
    }

    pub fn string(&self, name: &str, required: bool, problems: &mut Problems) -> Option<&'a str> {
        self.typed(name, required, "a string", Value::as_str, problems)
    }

    pub fn integer(&self, name: &str, required: bool, problems: &mut Problems) -> Option<i64> {
        self.typed(name, required, "an integer", Value::as_integer, problems)
    }
}

/// `name` as one part of a key path: bare if TOML allows it bare, else in
/// quotes. Control characters are left to the message's escaping
/// (`crate::escape`), which every mistake goes through when printed.
fn key_part(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if bare {
        name.to_string()
    } else {
        format!("\"{name}\"")
    }
}

/// A value as a message names it: `the integer 64`, `an array`.
pub fn describe(value: &Value) -> String {
    match value {
        // Quoted as it is: the message is escaped as a whole when printed.
        Value::String(text) => format!("the string \"{text}\""),
        Value::Integer(number) => format!("the integer {number}"),
        Value::Float(number) => format!("the float {number}"),
        Value::Boolean(flag) => format!("the boolean {flag}"),
        Value::Datetime(_) => "a date-time".into(),
        Value::Array(_) => "an array".into(),
        Value::Table(_) => "a table".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(source: &str) -> Table {
        source.parse().unwrap()
    }

    fn messages(problems: &Problems) -> Vec<String> {
        problems.list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn keys_are_prefixed_with_the_table_path() {
        let table = table("");
        assert_eq!(Fields::new("", &table).key("board"), "board");
        assert_eq!(Fields::new("vm[1]", &table).key("cpus"), "vm[1].cpus");
    }

    #[test]
    fn missing_and_mistyped_values_are_collected() {
        let table = table("name = 3\ncount = 'x'\n");
        let fields = Fields::new("board", &table);
        let mut problems = Problems::new(Path::new("f.toml"));
        assert_eq!(fields.string("name", true, &mut problems), None);
        assert_eq!(fields.integer("count", true, &mut problems), None);
        assert_eq!(fields.string("absent", true, &mut problems), None);
        assert_eq!(fields.string("optional", false, &mut problems), None);
        assert_eq!(
            messages(&problems),
            [
                "f.toml: board.name: must be a string, not the integer 3",
                "f.toml: board.count: must be an integer, not the string \"x\"",
                "f.toml: board.absent: missing",
            ]
        );
    }

    #[test]
    fn describes_every_kind_of_value() {
        let table = table("s = 'a'\ni = 1\nf = 1.5\nb = true\nd = 1979-05-27\na = []\nt = {}\n");
        let described: Vec<String> = ["s", "i", "f", "b", "d", "a", "t"]
            .iter()
            .map(|key| describe(&table[*key]))
            .collect();
        assert_eq!(
            described,
            [
                "the string \"a\"",
                "the integer 1",
                "the float 1.5",
                "the boolean true",
                "a date-time",
                "an array",
                "a table"
            ]
        );
    }
}
