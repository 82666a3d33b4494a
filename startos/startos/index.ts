/**
 * Plumbing: what StartOS loads from the package.
 */
import { buildManifest } from '@start9labs/start-sdk'
import { versionGraph } from './install/versionGraph'
import { manifest as sdkManifest } from './manifest'

export { actions } from './actions'
export { createBackup } from './backups'
export { init, uninit } from './init'
export { main } from './main'

export const manifest = buildManifest(versionGraph, sdkManifest)
