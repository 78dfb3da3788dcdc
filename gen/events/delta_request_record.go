package events

type DeltaRequestRecord struct {
	DeltaId     string `json:"delta_id" binding:"required"`
	OrgId       string `json:"org_id" binding:"required"`
	RequestedAt string `json:"requested_at" binding:"required"`
}
