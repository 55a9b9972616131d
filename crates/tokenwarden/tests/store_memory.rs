//! The store conformance suite against the in-memory store: two handles made for the same
//! test database share their data (each with its own key ring), as the suite requires.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use tokenwarden::KeyRing;
use tokenwarden::store::MemoryStore;
use tokenwarden_testkit::conformance::TestDb;

static DATABASES: LazyLock<Mutex<HashMap<TestDb, MemoryStore>>> = LazyLock::new(Mutex::default);

fn memory(db: TestDb, keys: Arc<KeyRing>) -> std::future::Ready<MemoryStore> {
    let mut dbs = DATABASES.lock().expect("lock");
    let store = match dbs.get(&db) {
        Some(existing) => existing.sharing(keys),
        None => {
            let store = MemoryStore::new(keys.clone());
            dbs.insert(db, store.sharing(keys));
            store
        }
    };
    std::future::ready(store)
}

tokenwarden_testkit::store_conformance_tests!(memory);
