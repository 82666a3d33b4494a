import { sdk } from './sdk'

// StartOS stops the service before a backup, so the SQLite database in the volume is
// consistent when it is copied; the whole volume (database, cluster file, SSH key,
// package state) is what a restore needs.
export const { createBackup, restoreInit } = sdk.setupBackups(async () =>
  sdk.Backups.ofVolumes('main'),
)
