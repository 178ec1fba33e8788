//! Cutting text short for records, messages and notifications.

/// The largest length up to `max` at which `text` can be cut: the start of a character
/// (as `str::floor_char_boundary`, not stable at this crate's `rust-version`).
pub fn floor_char_boundary(text: &str, max: usize) -> usize {
    if max >= text.len() {
        return text.len();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuts_at_a_character() {
        let s = "aé"; // 'é' is two bytes
        assert_eq!(super::floor_char_boundary(s, 2), 1);
        assert_eq!(super::floor_char_boundary(s, 3), 3);
        assert_eq!(super::floor_char_boundary(s, 9), 3);
        assert_eq!(super::floor_char_boundary(s, 0), 0);
    }
}
