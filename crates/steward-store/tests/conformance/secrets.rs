//! The vault's sealed secrets, and signing keys made once across nodes.

use crate::support::*;

on_both_backends!(secrets_are_kept_by_name_and_a_signing_key_is_made_once);

async fn secrets_are_kept_by_name_and_a_signing_key_is_made_once(s: &dyn Store) {
    s.put_secret("b", "sealed-b", 1).await.unwrap();
    s.put_secret("a", "sealed-a1", 2).await.unwrap();
    s.put_secret("a", "sealed-a2", 3).await.unwrap();
    assert_eq!(
        s.secrets().await.unwrap(),
        [
            ("a".to_string(), "sealed-a2".to_string(), 3),
            ("b".to_string(), "sealed-b".to_string(), 1)
        ],
        "by name, a second put replacing the first"
    );
    assert!(s.delete_secret("a").await.unwrap());
    assert!(!s.delete_secret("a").await.unwrap(), "there was none left");
    assert_eq!(s.secrets().await.unwrap().len(), 1);

    // The first node to ask stores its key; every later ask reads that one.
    assert_eq!(s.ensure_signing_key("sign", "k1", 5).await.unwrap(), "k1");
    assert_eq!(s.ensure_signing_key("sign", "k2", 6).await.unwrap(), "k1");
}
