//! Small pure helpers shared by the configuration and the I/O shell.

/// Parses a queue spec: `"0"`, `"0-3"` or `"0,2"` (and mixes like `"0-1,4"`).
/// Returns the queue numbers, sorted and without duplicates.
pub fn parse_queue_spec(spec: &str) -> Result<Vec<u16>, String> {
    let mut queues = Vec::new();
    for part in spec.split(',') {
        let part = part.trim();
        let bad = || format!("bad queue spec {spec:?}: expected N, N-M or N,M (0..=65535)");
        if let Some((a, b)) = part.split_once('-') {
            let a: u16 = a.trim().parse().map_err(|_| bad())?;
            let b: u16 = b.trim().parse().map_err(|_| bad())?;
            if a > b {
                return Err(bad());
            }
            queues.extend(a..=b);
        } else {
            queues.push(part.parse().map_err(|_| bad())?);
        }
    }
    queues.sort_unstable();
    queues.dedup();
    if queues.len() > 64 {
        return Err(format!("queue spec {spec:?} asks for more than 64 queues"));
    }
    Ok(queues)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_specs() {
        assert_eq!(parse_queue_spec("0").unwrap(), vec![0]);
        assert_eq!(parse_queue_spec("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(parse_queue_spec("0,2").unwrap(), vec![0, 2]);
        assert_eq!(parse_queue_spec("2,0-1").unwrap(), vec![0, 1, 2]);
        assert!(parse_queue_spec("3-1").is_err());
        assert!(parse_queue_spec("x").is_err());
        assert!(parse_queue_spec("").is_err());
        assert!(parse_queue_spec("0-100").is_err());
    }
}
