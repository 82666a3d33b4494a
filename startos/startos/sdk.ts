import { StartSdk } from '@start9labs/start-sdk'
import { manifest } from './manifest'

/** The SDK typed with this package's manifest; every module uses this one. */
export const sdk = StartSdk.of().withManifest(manifest).build(true)
