"""DICOM network services: the storage SCP, query/retrieve and export."""
