import { FileHelper, z } from '@start9labs/start-sdk'
import { sdk } from '../sdk'

const host = z.object({
  name: z.string(),
  address: z.string(),
  sshUser: z.string(),
  sshPort: z.number().int(),
  vramBudgetMib: z.number().int().nullable(),
  hostKey: z.string().nullable(),
})

/** The last Configure input, exactly as entered (it pre-fills the form). */
const configure = z.object({
  hosts: z.array(host),
  vllmPort: z.number().int(),
  containerName: z.string(),
  hiddenServices: z.array(z.string()),
  webhookUrl: z.string().nullable(),
  webhookSecret: z.string().nullable(),
})

/** Package state that is not one of Arbiter's own files. */
export const storeJson = FileHelper.json(
  { base: sdk.volumes.main, subpath: 'start9/store.json' },
  z.object({
    adminPassword: z.string().optional().catch(undefined),
    configure: configure.optional().catch(undefined),
  }),
)
