//! Plain-text tables: a header row and left-aligned columns as wide as their widest cell
//! (laid out by `comfy-table`, without borders).

use comfy_table::{Table, presets};

/// Renders `rows` under `headers`; an empty table says so.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(none)\n".to_owned();
    }
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(headers.iter().copied())
        .add_rows(rows.iter().cloned());
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect()
}

/// `key: value` lines, keys aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<width$}  {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let out = render(
            &["ID", "STATUS"],
            &[
                vec!["1".to_owned(), "Pending".to_owned()],
                vec!["12345".to_owned(), "Done".to_owned()],
            ],
        );
        assert_eq!(out, "ID     STATUS\n1      Pending\n12345  Done\n");
        assert_eq!(render(&["A"], &[]), "(none)\n");
    }

    #[test]
    fn fields_align_their_keys() {
        assert_eq!(
            fields(&[("id", "7".to_owned()), ("status", "Done".to_owned())]),
            "id:      7\nstatus:  Done\n"
        );
    }
}
