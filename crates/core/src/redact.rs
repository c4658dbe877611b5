//! Hiding secrets of connection URLs before they reach errors and logs.

/// `url` with the password of its user info replaced by `***`
/// (`postgres://u:secret@h/db` → `postgres://u:***@h/db`); anything else is unchanged. Only the
/// authority is looked at, so an `@` in the path or query is not mistaken for user info.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.find(['/', '?']).map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("redis://:secret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://u:***@h:4222");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("redis://127.0.0.1:6379/0?prefix=a@b"), "redis://127.0.0.1:6379/0?prefix=a@b");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
        assert_eq!(redact_url("memory://"), "memory://");
    }
}
